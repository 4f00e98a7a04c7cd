"""Journeys: versioned definitions, published, read, paused and resumed.

Every publish creates a new immutable version that becomes the latest;
runs keep the version they started on. Compiled versions are cached.
Before a version is stored, what it names in other services (its rule set)
is checked; every change writes its audit record in its own transaction
(:mod:`.audit_outbox`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from overture.orchestrator.v1 import journey_pb2
from overture.rules.v1 import audit_event_pb2
from overture_runtime.clock import Clock, IdGenerator
from overture_runtime.db import Database
from overture_runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from overture_runtime.protojson import canonical_json, digest, from_json

from .audit_outbox import SYSTEM_ACTOR, stage
from .definition import CompiledJourney, compile_journey, trigger_event_type
from .tables import journey_versions, journeys

__all__ = ["ActiveJourney", "JourneyStore", "ReferenceCheck"]

_STATES = {"active": journey_pb2.JOURNEY_STATE_ACTIVE, "paused": journey_pb2.JOURNEY_STATE_PAUSED}


@dataclass(frozen=True)
class ActiveJourney:
    """A journey version that starts runs."""

    name: str
    version: int
    compiled: CompiledJourney


@dataclass(frozen=True)
class _Snapshot:
    until: float
    triggers: dict[str, list[ActiveJourney]]
    paused: frozenset[str]
    goals: dict[str, list[str]]
    """Goal event type -> names of active journeys with that goal."""
    inactivity: dict[str, list[ActiveJourney]]
    """Event type -> active journeys whose inactivity trigger it re-arms."""
    schedules: list[ActiveJourney]
    """Active journeys on a schedule trigger."""


class ReferenceCheck(Protocol):
    """Checks what a definition names in other services."""

    async def check(self, tenant: str, spec: journey_pb2.JourneySpec) -> None:
        """Raise InvalidArgument for a name that does not exist, Unavailable
        when it cannot be checked."""


class JourneyStore:
    """Journeys of all tenants.

    *references* checks a definition before it is published (None checks
    nothing, for tests of the store alone); *audited* is awaited with the
    tenant after each audited change commits.
    """

    def __init__(
        self, db: Database, clock: Clock, *, ids: IdGenerator | None = None, references: ReferenceCheck | None = None,
        audited: Callable[[str], Awaitable[None]] | None = None, snapshot_ttl: float = 1.0,
    ) -> None:
        self._db = db
        self._clock = clock
        self._ids = ids or IdGenerator(clock)
        self._references = references
        self._audited = audited
        self._compiled: OrderedDict[tuple[str, str, int], CompiledJourney] = OrderedDict()
        self._snapshots: dict[str, _Snapshot] = {}
        self._snapshot_ttl = snapshot_ttl

    async def publish(self, *, tenant: str, name: str, spec: journey_pb2.JourneySpec, reason: str, author: str) -> tuple[journey_pb2.Journey, bool]:
        """Validate and store a new version; returns it and whether nothing changed."""
        compiled, problems = compile_journey(spec)
        if problems:
            raise InvalidArgument(f"the journey is invalid: {problems[0].description}", violations=problems)
        assert compiled is not None
        if self._references is not None:
            await self._references.check(tenant, spec)
        spec_digest = digest(spec)
        now = self._clock.now()
        trigger = trigger_event_type(spec)
        for _ in range(5):
            try:
                async with self._db.begin() as conn:
                    query = sa.select(journeys).where((journeys.c.tenant == tenant) & (journeys.c.name == name))
                    head = (await conn.execute(query.with_for_update())).first()
                    if head is not None:
                        latest = (await conn.execute(self._version(tenant, name, head.latest_version))).one()
                        if latest.digest == spec_digest:
                            return self._to_proto(latest, head.state), True
                    version = (head.latest_version if head else 0) + 1
                    values: dict[str, Any] = dict(tenant=tenant, name=name, version=version, digest=spec_digest,
                                                  spec=canonical_json(spec), author=author, reason=reason, create_time=now)
                    await conn.execute(journey_versions.insert().values(**values))
                    if head is None:
                        await conn.execute(journeys.insert().values(tenant=tenant, name=name, latest_version=version, state="active",
                                                                    trigger_event_type=trigger, update_time=now))
                    else:
                        await conn.execute(journeys.update().where((journeys.c.tenant == tenant) & (journeys.c.name == name))
                                           .values(latest_version=version, trigger_event_type=trigger, update_time=now))
                    row = (await conn.execute(self._version(tenant, name, version))).one()
                    state = head.state if head else "active"
                    await stage(conn, tenant=tenant, record_id=self._ids.new(), action=audit_event_pb2.AUDIT_ACTION_JOURNEY_VERSION_PUBLISHED,
                                actor=author, time=now, reason=reason, target=f"journey/{name}/{version}",
                                details={"journey": name, "version": version, "digest": spec_digest, "rule_set": spec.rule_set,
                                         "previous_version": head.latest_version if head else 0, "state": state})
                self._remember((tenant, name, version), compiled)
                self.forget(tenant)
                await self._after_audit(tenant)
                return self._to_proto(row, state), False
            except IntegrityError:
                continue
        raise FailedPrecondition("the journey is changing too fast; retry", reason="CONTENTION")

    async def get(self, *, tenant: str, name: str, version: int = 0) -> journey_pb2.Journey:
        """A version, or the latest."""
        async with self._db.connect() as conn:
            head = (await conn.execute(sa.select(journeys).where((journeys.c.tenant == tenant) & (journeys.c.name == name)))).first()
            if head is None:
                raise NotFound(f"journey {name!r} does not exist", reason="JOURNEY_NOT_FOUND")
            row = (await conn.execute(self._version(tenant, name, version or head.latest_version))).first()
        if row is None:
            raise NotFound(f"journey {name!r} has no version {version}", reason="VERSION_NOT_FOUND")
        state = head.state if row.version == head.latest_version else "superseded"
        return self._to_proto(row, state)

    async def list_latest(self, *, tenant: str, after: str, limit: int) -> list[journey_pb2.Journey]:
        """Latest versions by name, after the name *after*."""
        j, v = journeys, journey_versions
        query = (
            sa.select(v, j.c.state).join(j, (j.c.tenant == v.c.tenant) & (j.c.name == v.c.name) & (j.c.latest_version == v.c.version))
            .where((j.c.tenant == tenant) & (j.c.name > after)).order_by(j.c.name).limit(limit)
        )
        async with self._db.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [self._to_proto(r, r.state) for r in rows]

    async def set_state(
        self, *, tenant: str, name: str, state: str, actor: str = SYSTEM_ACTOR, reason: str = "", details: dict[str, object] | None = None,
    ) -> journey_pb2.Journey:
        """Pause or resume a journey. A change of state is audited with
        *actor* and *reason* (the orchestrator itself when no actor is given);
        setting the state it has already changes and records nothing."""
        now = self._clock.now()
        key = (journeys.c.tenant == tenant) & (journeys.c.name == name)
        async with self._db.begin() as conn:
            head = (await conn.execute(sa.select(journeys.c.state, journeys.c.latest_version).where(key).with_for_update())).first()
            if head is None:
                raise NotFound(f"journey {name!r} does not exist", reason="JOURNEY_NOT_FOUND")
            changed = head.state != state
            if changed:
                await conn.execute(journeys.update().where(key).values(state=state, update_time=now))
                action = audit_event_pb2.AUDIT_ACTION_JOURNEY_PAUSED if state == "paused" else audit_event_pb2.AUDIT_ACTION_JOURNEY_RESUMED
                await stage(conn, tenant=tenant, record_id=self._ids.new(), action=action, actor=actor, time=now, reason=reason,
                            target=f"journey/{name}", details={"journey": name, "latest_version": head.latest_version, **(details or {})})
        if changed:
            self.forget(tenant)
            await self._after_audit(tenant)
        return await self.get(tenant=tenant, name=name)

    async def _after_audit(self, tenant: str) -> None:
        if self._audited is not None:
            await self._audited(tenant)

    async def triggered_by(self, tenant: str, event_type: str) -> list[ActiveJourney]:
        """The active journeys an event of *event_type* triggers."""
        return list((await self._snapshot(tenant)).triggers.get(event_type, ()))

    async def paused(self, tenant: str) -> frozenset[str]:
        """The tenant's paused journeys."""
        return (await self._snapshot(tenant)).paused

    async def with_goal(self, tenant: str, event_type: str) -> list[str]:
        """The active journeys whose goal is an event of *event_type*."""
        return list((await self._snapshot(tenant)).goals.get(event_type, ()))

    async def inactive_after(self, tenant: str, event_type: str) -> list[ActiveJourney]:
        """The active journeys whose inactivity trigger an event of *event_type* re-arms."""
        return list((await self._snapshot(tenant)).inactivity.get(event_type, ()))

    async def scheduled(self, tenant: str) -> list[ActiveJourney]:
        """The tenant's active journeys on a schedule trigger."""
        return list((await self._snapshot(tenant)).schedules)

    def forget(self, tenant: str) -> None:
        """Drop the tenant's cached triggers, after a change in this replica."""
        self._snapshots.pop(tenant, None)

    async def _snapshot(self, tenant: str) -> _Snapshot:
        """The tenant's active triggers and paused journeys, held in memory for
        ``snapshot_ttl`` seconds (other replicas' changes show within it; this
        replica's at once), so that starting runs reads no journey rows."""
        now = time.monotonic()
        held = self._snapshots.get(tenant)
        if held is not None and held.until > now:
            return held
        j = journeys
        async with self._db.connect() as conn:
            rows = (await conn.execute(sa.select(j.c.name, j.c.latest_version, j.c.state, j.c.trigger_event_type).where(
                j.c.tenant == tenant))).all()
        triggers: dict[str, list[ActiveJourney]] = {}
        goals: dict[str, list[str]] = {}
        inactivity: dict[str, list[ActiveJourney]] = {}
        schedules: list[ActiveJourney] = []
        for r in rows:
            if r.state != "active":
                continue
            active = ActiveJourney(r.name, r.latest_version, await self.compiled(tenant, r.name, r.latest_version))
            spec = active.compiled.spec
            if r.trigger_event_type:
                triggers.setdefault(r.trigger_event_type, []).append(active)
            kind = spec.trigger.WhichOneof("kind")
            if kind == "inactivity":
                inactivity.setdefault(spec.trigger.inactivity.event_type, []).append(active)
            elif kind == "schedule":
                schedules.append(active)
            if spec.HasField("goal"):
                goals.setdefault(spec.goal.event_type, []).append(r.name)
        snapshot = _Snapshot(until=now + self._snapshot_ttl, triggers=triggers, paused=frozenset(r.name for r in rows if r.state == "paused"),
                             goals=goals, inactivity=inactivity, schedules=schedules)
        self._snapshots[tenant] = snapshot
        while len(self._snapshots) > 10_000:
            self._snapshots.pop(next(iter(self._snapshots)))
        return snapshot

    async def compiled(self, tenant: str, name: str, version: int) -> CompiledJourney:
        """The compiled form of one version."""
        key = (tenant, name, version)
        cached = self._compiled.get(key)
        if cached is not None:
            self._compiled.move_to_end(key)
            return cached
        async with self._db.connect() as conn:
            row = (await conn.execute(self._version(tenant, name, version))).first()
        if row is None:
            raise NotFound(f"journey {name!r} has no version {version}", reason="VERSION_NOT_FOUND")
        compiled, problems = compile_journey(from_json(row.spec, journey_pb2.JourneySpec))
        if compiled is None:
            raise FailedPrecondition(f"journey {name!r} v{version} no longer compiles: {problems[0].description}")
        self._remember(key, compiled)
        return compiled

    async def state(self, tenant: str, name: str) -> str:
        """``active`` or ``paused``; raises NotFound."""
        async with self._db.connect() as conn:
            state = (await conn.execute(sa.select(journeys.c.state).where((journeys.c.tenant == tenant) & (journeys.c.name == name)))).scalar()
        if state is None:
            raise NotFound(f"journey {name!r} does not exist", reason="JOURNEY_NOT_FOUND")
        return str(state)

    def _remember(self, key: tuple[str, str, int], compiled: CompiledJourney) -> None:
        self._compiled[key] = compiled
        while len(self._compiled) > 512:
            self._compiled.popitem(last=False)

    @staticmethod
    def _version(tenant: str, name: str, version: int) -> Any:
        v = journey_versions
        return sa.select(v).where((v.c.tenant == tenant) & (v.c.name == name) & (v.c.version == version))

    @staticmethod
    def _to_proto(row: Any, state: str) -> journey_pb2.Journey:
        journey = journey_pb2.Journey(
            name=row.name, version=row.version, digest=row.digest, spec=from_json(row.spec, journey_pb2.JourneySpec),
            author=row.author, reason=row.reason, state=_STATES.get(state, journey_pb2.JOURNEY_STATE_SUPERSEDED),
        )
        journey.create_time.FromDatetime(row.create_time)
        return journey
