"""Journeys: versioned definitions, published, read, paused, resumed and archived.

Every publish that changes the content creates a new immutable version that
becomes the latest (the shared algorithm of :mod:`overture_runtime.versioned`);
runs keep the version they started on. Compiled versions are cached.
Before a version is stored, what it names in other services (its rule set)
is checked; every change writes its audit record in its own transaction
(:mod:`.audit_outbox`). A journey is ``active``, ``paused`` or ``archived``:
archiving cancels its live runs in the same transaction, and only a new
version revives it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from overture.orchestrator.v1 import journey_pb2
from overture.rules.v1 import audit_event_pb2
from overture_runtime.clock import Clock, IdGenerator
from overture_runtime.db import Database
from overture_runtime.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from overture_runtime.protojson import from_json
from overture_runtime.versioned import Publication, VersionedSpecs, VersionedTables

from .audit_outbox import SYSTEM_ACTOR, stage
from .definition import CompiledJourney, compile_journey, trigger_event_type
from .drafts import discard_published
from .tables import inactivity, journey_versions, journeys

__all__ = ["ActiveJourney", "JourneyStore", "ReferenceCheck"]

_STATES = {"active": journey_pb2.JOURNEY_STATE_ACTIVE, "paused": journey_pb2.JOURNEY_STATE_PAUSED,
           "archived": journey_pb2.JOURNEY_STATE_ARCHIVED}


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
        self._specs = VersionedSpecs(db, VersionedTables(head=journeys, versions=journey_versions), what="journey")
        self._clock = clock
        self._ids = ids or IdGenerator(clock)
        self._references = references
        self._audited = audited
        self._compiled: OrderedDict[tuple[str, str, int], CompiledJourney] = OrderedDict()
        self._snapshots: dict[str, _Snapshot] = {}
        self._snapshot_ttl = snapshot_ttl

    async def publish(
        self, *, tenant: str, name: str, spec: journey_pb2.JourneySpec, reason: str, author: str,
    ) -> tuple[journey_pb2.Journey, bool, tuple[FieldViolation, ...]]:
        """Validate and store a new version (:mod:`overture_runtime.versioned`);
        returns it, whether nothing changed, and what the definition is
        warned about. Publishing an archived journey always makes a new
        version, which revives it."""
        compiled, problems = compile_journey(spec)
        if problems:
            raise InvalidArgument(f"the journey is invalid: {problems[0].description}", violations=problems)
        assert compiled is not None
        if self._references is not None:
            await self._references.check(tenant, spec)
        now = self._clock.now()
        trigger = trigger_event_type(spec)

        def head_values(head: Any) -> dict[str, Any]:
            revived = head is None or head.state == "archived"
            return {"trigger_event_type": trigger, **({"state": "active"} if revived else {})}

        async def audited(conn: AsyncConnection, published: Publication) -> None:
            head, row = published.head, published.version
            state = "active" if head is None or head.state == "archived" else head.state
            await discard_published(conn, tenant=tenant, name=name, digest=row.digest)
            await stage(conn, tenant=tenant, record_id=self._ids.new(), action=audit_event_pb2.AUDIT_ACTION_JOURNEY_VERSION_PUBLISHED,
                        actor=author, time=now, reason=reason, target=f"journey/{name}/{row.version}",
                        details={"journey": name, "version": row.version, "digest": row.digest, "rule_set": spec.rule_set,
                                 "previous_version": published.previous, "state": state,
                                 **({"revived": "archived"} if head is not None and head.state == "archived" else {})})

        published = await self._specs.publish(tenant=tenant, name=name, spec=spec, author=author, reason=reason, now=now,
                                              force=lambda head: head.state == "archived", head_values=head_values, on_created=audited)
        head = published.head
        if not published.created:
            assert head is not None  # only an existing journey can be unchanged
            async with self._db.begin() as conn:  # the draft, if it holds this content, was published before
                await discard_published(conn, tenant=tenant, name=name, digest=published.version.digest)
            return self._to_proto(published.version, head.state), True, compiled.warnings
        self._remember((tenant, name, published.version.version), compiled)
        self.forget(tenant)
        await self._after_audit(tenant)
        return self._to_proto(published.version, "active" if head is None or head.state == "archived" else head.state), False, compiled.warnings

    async def get(self, *, tenant: str, name: str, version: int = 0) -> journey_pb2.Journey:
        """A version, or the latest."""
        async with self._db.connect() as conn:
            head = await self._specs.head(conn, tenant, name)
            if head is None:
                raise NotFound(f"journey {name!r} does not exist", reason="JOURNEY_NOT_FOUND")
            row = await self._specs.version(conn, tenant, name, version or head.latest_version)
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

    async def list_versions(self, *, tenant: str, name: str, limit: int, before: int | None) -> list[journey_pb2.Journey]:
        """Published versions newest first, those below *before* when given."""
        async with self._db.connect() as conn:
            head = await self._specs.head(conn, tenant, name)
            if head is None:
                raise NotFound(f"journey {name!r} does not exist", reason="JOURNEY_NOT_FOUND")
            rows = await self._specs.versions(conn, tenant, name, limit=limit, before=before)
        return [self._to_proto(r, head.state if r.version == head.latest_version else "superseded") for r in rows]

    async def set_state(
        self, *, tenant: str, name: str, state: str, actor: str = SYSTEM_ACTOR, reason: str = "", details: dict[str, object] | None = None,
    ) -> journey_pb2.Journey:
        """Pause or resume a journey. A change of state is audited with
        *actor* and *reason* (the orchestrator itself when no actor is given);
        setting the state it has already changes and records nothing. An
        archived journey stays archived: pausing it changes nothing, resuming
        it is refused (publishing a new version revives it)."""
        now = self._clock.now()
        async with self._db.begin() as conn:
            head = await self._specs.head(conn, tenant, name, lock=True)
            if head is None:
                raise NotFound(f"journey {name!r} does not exist", reason="JOURNEY_NOT_FOUND")
            if head.state == "archived" and state == "active":
                raise FailedPrecondition(f"journey {name!r} is archived; publish a new version to revive it", reason="JOURNEY_ARCHIVED")
            changed = head.state not in (state, "archived")
            if changed:
                action = audit_event_pb2.AUDIT_ACTION_JOURNEY_PAUSED if state == "paused" else audit_event_pb2.AUDIT_ACTION_JOURNEY_RESUMED
                await self._change_state(conn, tenant, name, state, now=now, action=action, actor=actor, reason=reason,
                                         details={"journey": name, "latest_version": head.latest_version, **(details or {})})
        if changed:
            self.forget(tenant)
            await self._after_audit(tenant)
        return await self.get(tenant=tenant, name=name)

    async def archive(self, *, tenant: str, name: str, actor: str, reason: str,
                      cancel_runs: Callable[[AsyncConnection], Awaitable[int]]) -> tuple[journey_pb2.Journey, int]:
        """Archive a journey, and in the same transaction cancel its live runs
        with *cancel_runs* (given the connection; returns how many) and
        delete its inactivity timers, audited once with the count. Archiving an archived journey records nothing,
        but still cancels what is live (a run a replica started before it
        saw the archive). Returns the journey and how many runs were cancelled."""
        now = self._clock.now()
        async with self._db.begin() as conn:
            head = await self._specs.head(conn, tenant, name, lock=True)
            if head is None:
                raise NotFound(f"journey {name!r} does not exist", reason="JOURNEY_NOT_FOUND")
            cancelled = await cancel_runs(conn)
            # Its inactivity timers go too: they would start runs of a journey that starts none.
            await conn.execute(inactivity.delete().where((inactivity.c.tenant == tenant) & (inactivity.c.journey == name)))
            changed = head.state != "archived"
            if changed:
                await self._change_state(conn, tenant, name, "archived", now=now, action=audit_event_pb2.AUDIT_ACTION_JOURNEY_ARCHIVED,
                                         actor=actor, reason=reason, details={"journey": name, "latest_version": head.latest_version,
                                                                              "previous_state": head.state, "cancelled_runs": cancelled})
        if changed:
            self.forget(tenant)
            await self._after_audit(tenant)
        return await self.get(tenant=tenant, name=name), cancelled

    async def _change_state(self, conn: AsyncConnection, tenant: str, name: str, state: str, *, now: datetime,
                            action: audit_event_pb2.AuditAction.ValueType, actor: str, reason: str, details: dict[str, object]) -> None:
        await conn.execute(journeys.update().where((journeys.c.tenant == tenant) & (journeys.c.name == name)).values(
            state=state, update_time=now))
        await stage(conn, tenant=tenant, record_id=self._ids.new(), action=action, actor=actor, time=now, reason=reason,
                    target=f"journey/{name}", details=details)

    async def _after_audit(self, tenant: str) -> None:
        if self._audited is not None:
            await self._audited(tenant)

    async def triggered_by(self, tenant: str, event_type: str) -> list[ActiveJourney]:
        """The active journeys an event of *event_type* triggers."""
        return list((await self._snapshot(tenant)).triggers.get(event_type, ()))

    async def paused(self, tenant: str) -> frozenset[str]:
        """The tenant's journeys whose runs must not go on: paused or archived
        (a run one replica started before it saw the change is cancelled
        when it executes)."""
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
        snapshot = _Snapshot(until=now + self._snapshot_ttl, triggers=triggers, paused=frozenset(r.name for r in rows if r.state in ("paused", "archived")),
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
            row = await self._specs.version(conn, tenant, name, version)
        if row is None:
            raise NotFound(f"journey {name!r} has no version {version}", reason="VERSION_NOT_FOUND")
        compiled, problems = compile_journey(from_json(row.spec, journey_pb2.JourneySpec))
        if compiled is None:
            raise FailedPrecondition(f"journey {name!r} v{version} no longer compiles: {problems[0].description}")
        self._remember(key, compiled)
        return compiled

    async def state(self, tenant: str, name: str) -> str:
        """``active``, ``paused`` or ``archived``; raises NotFound."""
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
    def _to_proto(row: Any, state: str) -> journey_pb2.Journey:
        journey = journey_pb2.Journey(
            name=row.name, version=row.version, digest=row.digest, spec=from_json(row.spec, journey_pb2.JourneySpec),
            author=row.author, reason=row.reason, state=_STATES.get(state, journey_pb2.JOURNEY_STATE_SUPERSEDED),
        )
        journey.create_time.FromDatetime(row.create_time)
        return journey
