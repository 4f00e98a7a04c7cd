"""Profiles: traits, consent, segments, time zone and suppression.

Every write goes through :class:`ProfileStore`; reads for decisions return a
:class:`~overture_rules.engine.ProfileView`. Consent changes are ordered by
when the subject made them: an older change never overwrites a newer one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
import structlog
from redis.exceptions import RedisError
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from overture.common.v1 import event_pb2, messaging_pb2
from overture.rules.v1 import audit_event_pb2, decision_pb2, profile_pb2
from overture_runtime import limits
from overture_runtime.clock import Clock
from overture_runtime.db import Database, any_of, any_param, built_once, insert_ignore
from overture_runtime.errors import FieldViolation, NotFound, Violations
from overture_runtime.privacy import pseudonymize
from overture_runtime.protojson import struct_from_dict, struct_to_dict

from . import audit
from .caps import CapLedger
from .engine import ProfileView, channel_name
from .profile_cache import LocalViews, ProfileCache
from .segments import sync_segments
from .tables import consents, decisions, profiles, segment_members

__all__ = ["TRAITS_MAX_KEYS", "ProfileStore"]

log = structlog.get_logger("overture.rules")

_PROFILE_EVENTS = {"identify", "consent.granted", "consent.revoked", "segment.entered", "segment.exited"}
TRAITS_MAX_KEYS = 256
"""The most traits a profile may hold."""


def _of_subjects(table: sa.Table, on_postgresql: bool) -> sa.Select[Any]:
    return sa.select(table).where((table.c.tenant == sa.bindparam("tenant")) & any_param(table.c.subject_id, "subject_ids", on_postgresql=on_postgresql))


_PROFILES = built_once(lambda on_postgresql: _of_subjects(profiles, on_postgresql))
_CONSENTS = built_once(lambda on_postgresql: _of_subjects(consents, on_postgresql))
"""A tenant's profiles and consents of some subjects (``tenant``, ``subject_ids``), for the batch reads."""
_PROFILE_FIELDS = frozenset(profile_pb2.Profile.DESCRIPTOR.fields_by_name) - {"subject_id"}
"""The fields of a Profile a read mask may leave out (its subject id is always returned)."""


def _channel_value(name: str) -> messaging_pb2.Channel.ValueType:
    try:
        return messaging_pb2.Channel.Value(f"CHANNEL_{name.upper()}")
    except ValueError:
        return messaging_pb2.CHANNEL_UNSPECIFIED


class ProfileStore:
    """Profiles of all tenants, in the database."""

    def __init__(
        self, db: Database, clock: Clock, *, cache: ProfileCache | None = None, ledger: CapLedger | None = None,
        read_timeout: float = 1.0, local: LocalViews | None = None,
    ) -> None:
        self._read_timeout_ms = read_timeout * 1000
        self._db = db
        self._clock = clock
        self._cache = cache
        self._ledger = ledger
        self.local = local
        """Views kept in this process for decisions (validated by generation), if any."""

    @property
    def db(self) -> Database:
        """The profiles' database."""
        return self._db

    @property
    def cache(self) -> ProfileCache | None:
        """The Redis read-through cache, if any."""
        return self._cache

    async def view(self, *, tenant: str, subject_id: str) -> ProfileView:
        """What a decision reads of a profile; an empty view when there is none."""
        return (await self.view_many(tenant=tenant, subject_ids=[subject_id]))[subject_id]

    async def view_many(self, *, tenant: str, subject_ids: Sequence[str]) -> dict[str, ProfileView]:
        """Views of many subjects: from the cache, the rest from the database
        (which then fills the cache). Raises if the database is needed and down."""
        wanted = list(dict.fromkeys(subject_ids))
        cached: dict[str, tuple[ProfileView | None, str]] = {}
        if self._cache is not None:
            try:
                cached = await self._cache.get_many(tenant, wanted)
            except RedisError as error:
                log.warning("rules.profile_cache_unavailable", error=type(error).__name__)
        views = {s: v for s, (v, _) in cached.items() if v is not None}
        missing = [s for s in wanted if s not in views]
        if missing:
            loaded = await self.load_views(tenant, missing)
            views.update(loaded)
            if self._cache is not None and cached:
                try:
                    await self._cache.put_many(tenant, [(loaded[s], cached[s][1]) for s in missing])
                except RedisError as error:
                    log.warning("rules.profile_cache_unavailable", error=type(error).__name__)
        return views

    async def load_views(self, tenant: str, subject_ids: Sequence[str]) -> dict[str, ProfileView]:
        """Views read from the database (an empty view for a subject without
        a profile). Raises when the store cannot be read within the read timeout."""
        async with self._db.begin() as conn:
            if conn.dialect.name == "postgresql":
                # A decision must not hang on a locked or overloaded store: past
                # the timeout the read fails and the decision fails closed.
                await conn.execute(sa.text(f"SET LOCAL statement_timeout = {int(self._read_timeout_ms)}"))
            wanted = {"tenant": tenant, "subject_ids": sorted(set(subject_ids))}
            rows = (await conn.execute(_PROFILES(conn), wanted)).all()
            consent_rows = (await conn.execute(_CONSENTS(conn), wanted)).all()
        by_subject: dict[str, list[Any]] = {}
        for c in consent_rows:
            by_subject.setdefault(c.subject_id, []).append(c)
        views = {s: ProfileView(subject_id=s, exists=False) for s in subject_ids}
        for row in rows:
            held = by_subject.get(row.subject_id, [])
            views[row.subject_id] = ProfileView(
                subject_id=row.subject_id, traits=row.traits,
                granted=frozenset((c.channel, c.purpose) for c in held if c.status == "granted"),
                revoked=frozenset((c.channel, c.purpose) for c in held if c.status == "revoked"),
                segments=tuple(row.segments), timezone=row.timezone, suppression_lists=frozenset(row.suppression_lists),
                erased=row.erased,
            )
        return views

    async def invalidate(self, tenant: str, subject_ids: Sequence[str]) -> None:
        """After a write committed: drop the subjects' cached views, here and in Redis."""
        if self.local is not None:
            self.local.forget(tenant, subject_ids)
        if self._cache is None or not subject_ids:
            return
        try:
            await self._cache.invalidate(tenant, list(dict.fromkeys(subject_ids)))
        except RedisError as error:  # the cached view expires on its own
            log.error("rules.profile_cache_invalidation_failed", error=type(error).__name__, subjects=len(subject_ids))

    async def get(self, *, tenant: str, subject_id: str) -> profile_pb2.Profile:
        """The profile as its proto."""
        profile = (await self.get_many(tenant=tenant, subject_ids=[subject_id])).get(subject_id)
        if profile is None:
            raise NotFound("the subject has no profile", reason="PROFILE_NOT_FOUND")
        return profile

    async def get_many(self, *, tenant: str, subject_ids: Sequence[str], fields: frozenset[str] | None = None) -> dict[str, profile_pb2.Profile]:
        """The profiles of those of *subject_ids* that have one, by subject id;
        with *fields*, only those fields of each (and its ``subject_id``)."""
        async with self._db.connect() as conn:
            found = await self.load_protos(conn, tenant, subject_ids, with_consents=fields is None or "consents" in fields)
        if fields is not None:
            for profile in found.values():
                for name in _PROFILE_FIELDS - fields:
                    profile.ClearField(name)  # type: ignore[arg-type]  # a name of Profile's own descriptor
        return found

    async def upsert(
        self, *, tenant: str, subject_id: str, traits: Mapping[str, Any] | None = None, timezone: str = "",
        add_lists: Sequence[str] = (), remove_lists: Sequence[str] = (),
        add_segments: Sequence[str] = (), remove_segments: Sequence[str] = (),
    ) -> profile_pb2.Profile:
        """Create the profile or merge into it; a None trait value removes the trait."""
        async with self._db.begin() as conn:
            await self._merge(conn, tenant, subject_id, traits or {}, timezone, add_lists, remove_lists, add_segments, remove_segments)
            profile = await self._load(conn, tenant, subject_id)
        await self.invalidate(tenant, [subject_id])
        assert profile is not None
        return profile

    async def set_consent(
        self, *, tenant: str, subject_id: str, channel: messaging_pb2.Channel.ValueType, purpose: str, granted: bool, source: str, when: dt.datetime | None
    ) -> profile_pb2.Profile:
        """Grant or revoke one consent, unless a newer change is stored."""
        async with self._db.begin() as conn:
            await self._merge(conn, tenant, subject_id, {}, "", (), (), (), ())
            await self._consent(conn, tenant, subject_id, channel_name(channel), purpose, granted, source, when or self._clock.now())
            profile = await self._load(conn, tenant, subject_id)
        await self.invalidate(tenant, [subject_id])
        assert profile is not None
        return profile

    async def apply_events(self, *, tenant: str, events: Sequence[event_pb2.Event]) -> list[tuple[bool, list[FieldViolation]]]:
        """Apply identify, consent and segment events in order; one result per event.

        The batch is applied in one transaction with a fixed number of
        statements: the touched profiles and consents are read (locked) once,
        the events are applied to them in memory, in order, and what changed
        is written back."""
        results: list[tuple[bool, list[FieldViolation]]] = []
        changes: list[tuple[event_pb2.Event, dict[str, Any]]] = []
        for event in events:
            if event.event_type not in _PROFILE_EVENTS:
                results.append((False, []))
                continue
            change, problems = self._parse_profile_event(event)
            results.append((not problems, problems))
            if not problems:
                changes.append((event, change))
        if not changes:
            return results
        now = self._clock.now()
        subjects = list(dict.fromkeys(e.subject_id for e, _ in changes))
        async with self._db.begin() as conn:
            await conn.execute(insert_ignore(conn, profiles, index_elements=["tenant", "subject_id"]), [
                dict(tenant=tenant, subject_id=s, traits={}, segments=[], suppression_lists=[], timezone="", erased=False,
                     create_time=now, update_time=now) for s in subjects])
            query = sa.select(profiles).where((profiles.c.tenant == tenant) & any_of(conn, profiles.c.subject_id, subjects))
            if conn.dialect.name == "postgresql":
                query = query.order_by(profiles.c.subject_id).with_for_update()  # a fixed lock order: no deadlocks between batches
            state = {r.subject_id: {"traits": dict(r.traits), "segments": list(r.segments), "timezone": r.timezone, "erased": r.erased}
                     for r in (await conn.execute(query)).all()}
            segments_before = {s: list(p["segments"]) for s, p in state.items()}
            held = {(c.subject_id, c.channel, c.purpose): c.update_time for c in (await conn.execute(sa.select(
                consents.c.subject_id, consents.c.channel, consents.c.purpose, consents.c.update_time).where(
                (consents.c.tenant == tenant) & any_of(conn, consents.c.subject_id, subjects)))).all()}
            touched: set[str] = set()
            consent_rows: dict[tuple[str, str, str], dict[str, Any]] = {}
            for event, change in changes:
                profile = state[event.subject_id]
                if profile["erased"]:
                    continue  # an erased profile takes no new personal data
                if "consent" in change:
                    channel, purpose, granted, when = change["consent"]
                    key = (event.subject_id, channel, purpose)
                    if key in held and held[key] > when:
                        continue  # an older change never overwrites a newer one
                    held[key] = when
                    consent_rows[key] = dict(tenant=tenant, subject_id=event.subject_id, channel=channel, purpose=purpose,
                                             status="granted" if granted else "revoked", source=f"event:{event.event_id}", update_time=when)
                    continue
                for trait, value in change.get("traits", {}).items():
                    if value is None:
                        profile["traits"].pop(trait, None)
                    else:
                        profile["traits"][trait] = value
                if change.get("timezone"):
                    profile["timezone"] = change["timezone"]
                if change.get("enter") and change["enter"] not in profile["segments"]:
                    profile["segments"].append(change["enter"])
                if change.get("exit") in profile["segments"]:
                    profile["segments"].remove(change["exit"])
                touched.add(event.subject_id)
            if touched:
                await conn.execute(profiles.update().where(
                    (profiles.c.tenant == tenant) & (profiles.c.subject_id == sa.bindparam("b_subject"))
                ).values(traits=sa.bindparam("b_traits"), segments=sa.bindparam("b_segments"), timezone=sa.bindparam("b_timezone"),
                         update_time=now), [
                    dict(b_subject=s, b_traits=state[s]["traits"], b_segments=state[s]["segments"], b_timezone=state[s]["timezone"])
                    for s in touched])
                await sync_segments(conn, tenant, {s: (segments_before[s], state[s]["segments"]) for s in touched})
            if consent_rows:
                dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
                upsert = dialect.insert(consents)
                await conn.execute(upsert.on_conflict_do_update(
                    index_elements=["tenant", "subject_id", "channel", "purpose"],
                    set_={"status": upsert.excluded.status, "source": upsert.excluded.source, "update_time": upsert.excluded.update_time},
                    where=consents.c.update_time <= upsert.excluded.update_time,
                ), list(consent_rows.values()))
        await self.invalidate(tenant, subjects)
        return results

    def _parse_profile_event(self, event: event_pb2.Event) -> tuple[dict[str, Any], list[FieldViolation]]:
        """What a profile event changes, or its problems."""
        v = Violations()
        if not event.subject_id:
            v.add("subject_id", "subject_id is required", "REQUIRED")
        attrs = struct_to_dict(event.attributes)
        when = event.occurred_at.ToDatetime(tzinfo=dt.UTC) if event.HasField("occurred_at") else self._clock.now()
        change: dict[str, Any] = {}
        if event.event_type == "identify":
            traits = attrs.get("traits", attrs)
            if not isinstance(traits, dict):
                v.add("attributes.traits", "traits must be an object", "WRONG_TYPE")
                traits = {}
            elif len(traits) > TRAITS_MAX_KEYS:
                v.add("attributes.traits", f"at most {TRAITS_MAX_KEYS} traits", "TOO_MANY")
            timezone = attrs.get("timezone") or traits.get("timezone") or ""
            if timezone and not _valid_timezone(str(timezone)):
                v.add("attributes.timezone", f"unknown time zone {timezone!r}", "UNKNOWN_TIMEZONE")
            change = {"traits": traits, "timezone": str(timezone)}
        elif event.event_type.startswith("consent."):
            channel, purpose = str(attrs.get("channel", "")), str(attrs.get("purpose", "marketing"))
            if _channel_value(channel) == messaging_pb2.CHANNEL_UNSPECIFIED:
                v.add("attributes.channel", "channel must name a channel, for example 'email'", "INVALID_CHANNEL")
            change = {"consent": (channel.lower(), purpose, event.event_type == "consent.granted", when)}
        else:
            segment = str(attrs.get("segment", ""))
            if v.require("attributes.segment", segment) and len(segment) > limits.NAME:
                v.add("attributes.segment", f"a segment name has at most {limits.NAME} characters", "TOO_LONG")
            change = {"enter": segment} if event.event_type == "segment.entered" else {"exit": segment}
        return change, v.items

    async def erase(self, *, tenant: str, subject_id: str, reason: str, actor: str) -> str:
        """Erase the subject's personal data; keep an audit entry under a pseudonym."""
        pseudonym = pseudonymize(subject_id, salt=tenant)
        now = self._clock.now()
        for _ in range(5):
            try:
                async with self._db.begin() as conn:
                    await self._merge(conn, tenant, subject_id, {}, "", (), (), (), ())
                    await conn.execute(profiles.update().where(self._key(profiles, tenant, subject_id)).values(
                        traits={}, segments=[], tags=[], timezone="", erased=True, update_time=now))
                    await conn.execute(consents.delete().where(self._key(consents, tenant, subject_id)))
                    await conn.execute(segment_members.delete().where(self._key(segment_members, tenant, subject_id)))
                    await self._pseudonymize_decisions(conn, tenant, subject_id, pseudonym)
                    await audit.append(conn, tenant=tenant, action=audit_event_pb2.AUDIT_ACTION_PROFILE_ERASED, actor=actor,
                                       time=now, reason=reason, target=f"profile/{pseudonym}", details={})
                await self.invalidate(tenant, [subject_id])
                if self._ledger is not None:
                    try:
                        await self._ledger.forget(tenant, subject_id)
                    except RedisError as error:  # the ledger holds no personal data and expires on its own
                        log.warning("rules.cap_ledger_forget_failed", error=type(error).__name__)
                return pseudonym
            except audit.ConcurrentAppend:
                continue
        raise RuntimeError("audit log contention")

    # -- internals -----------------------------------------------------------

    @staticmethod
    async def _pseudonymize_decisions(conn: AsyncConnection, tenant: str, subject_id: str, pseudonym: str) -> None:
        """Rewrite the subject's decision records under its pseudonym: the
        column, the stored record, and the replay inputs (which lose the
        profile's traits altogether). ``sa.null()``, not ``None``: a JSON
        column stores ``None`` as the JSON value null, which backtests would
        then try to replay."""
        rows = (await conn.execute(sa.select(decisions.c.decision_id, decisions.c.record).where(
            (decisions.c.tenant == tenant) & (decisions.c.subject_id == subject_id)))).all()
        for row in rows:
            record = decision_pb2.Decision.FromString(row.record)
            record.subject_id = pseudonym
            record.profile_snapshot.Clear()
            await conn.execute(decisions.update().where((decisions.c.tenant == tenant) & (decisions.c.decision_id == row.decision_id))
                               .values(subject_id=pseudonym, record=record.SerializeToString(), replay=sa.null()))

    @staticmethod
    def _key(table: sa.Table, tenant: str, subject_id: str) -> Any:
        return (table.c.tenant == tenant) & (table.c.subject_id == subject_id)

    def _row(self, tenant: str, subject_id: str) -> Any:
        return sa.select(profiles).where(self._key(profiles, tenant, subject_id))

    def _consents(self, tenant: str, subject_id: str) -> Any:
        return sa.select(consents).where(self._key(consents, tenant, subject_id))

    async def _merge(
        self, conn: AsyncConnection, tenant: str, subject_id: str, traits: Mapping[str, Any], timezone: str,
        add_lists: Sequence[str], remove_lists: Sequence[str], add_segments: Sequence[str], remove_segments: Sequence[str],
    ) -> None:
        now = self._clock.now()
        await conn.execute(insert_ignore(conn, profiles, index_elements=["tenant", "subject_id"]).values(
            tenant=tenant, subject_id=subject_id, traits={}, segments=[], suppression_lists=[], timezone="",
            erased=False, create_time=now, update_time=now))
        if not (traits or timezone or add_lists or remove_lists or add_segments or remove_segments):
            return
        query = self._row(tenant, subject_id)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        row = (await conn.execute(query)).one()
        if row.erased:
            return  # an erased profile takes no new personal data
        merged = dict(row.traits)
        for key, value in traits.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        lists = [x for x in row.suppression_lists if x not in remove_lists] + [x for x in add_lists if x not in row.suppression_lists]
        segments = [x for x in row.segments if x not in remove_segments] + [x for x in add_segments if x not in row.segments]
        await conn.execute(profiles.update().where(self._key(profiles, tenant, subject_id)).values(
            traits=merged, timezone=timezone or row.timezone, suppression_lists=lists, segments=segments, update_time=now))
        await sync_segments(conn, tenant, {subject_id: (list(row.segments), segments)})

    async def _consent(
        self, conn: AsyncConnection, tenant: str, subject_id: str, channel: str, purpose: str, granted: bool,
        source: str, when: dt.datetime,
    ) -> None:
        status = "granted" if granted else "revoked"
        key = self._key(consents, tenant, subject_id) & (consents.c.channel == channel) & (consents.c.purpose == purpose)
        inserted = await conn.execute(insert_ignore(conn, consents, index_elements=["tenant", "subject_id", "channel", "purpose"]).values(
            tenant=tenant, subject_id=subject_id, channel=channel, purpose=purpose, status=status, source=source, update_time=when))
        if inserted.rowcount == 0:
            await conn.execute(consents.update().where(key & (consents.c.update_time <= when)).values(
                status=status, source=source, update_time=when))

    async def _load(self, conn: AsyncConnection, tenant: str, subject_id: str) -> profile_pb2.Profile | None:
        return (await self.load_protos(conn, tenant, [subject_id])).get(subject_id)

    @staticmethod
    async def load_protos(conn: AsyncConnection, tenant: str, subject_ids: Sequence[str], *, with_consents: bool = True) -> dict[str, profile_pb2.Profile]:
        """The profiles of *subject_ids* that exist, in two statements on *conn*
        (one without consents, when not *with_consents*)."""
        rows = (await conn.execute(_PROFILES(conn), {"tenant": tenant, "subject_ids": sorted(set(subject_ids))})).all()
        found: dict[str, profile_pb2.Profile] = {}
        for row in rows:
            profile = found[row.subject_id] = profile_pb2.Profile(
                subject_id=row.subject_id, traits=struct_from_dict(row.traits), segments=row.segments, timezone=row.timezone,
                suppression_lists=row.suppression_lists, erased=row.erased, tags=row.tags,
            )
            profile.update_time.FromDatetime(row.update_time)
        if found and with_consents:
            held = (await conn.execute(_CONSENTS(conn), {"tenant": tenant, "subject_ids": sorted(found)})).all()
            for c in sorted(held, key=lambda c: (c.channel, c.purpose)):
                consent = found[c.subject_id].consents.add(
                    channel=_channel_value(c.channel), purpose=c.purpose, source=c.source,
                    status=profile_pb2.CONSENT_STATUS_GRANTED if c.status == "granted" else profile_pb2.CONSENT_STATUS_REVOKED,
                )
                consent.update_time.FromDatetime(c.update_time)
        return found


def _valid_timezone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True
