"""UpdateProfile: one change to one profile (traits set, removed or added
to; tags; segments), made in one transaction, once per request id.

The change is checked and applied in memory by :func:`apply_change` (pure),
on the profile row locked for the transaction; the idempotency claim, the
new row and the stored answer commit together, so a repeat of the request
id, even after a crash, changes nothing more and gets the profile as the
first call left it. An erased profile takes no change.

Segments entered or left here change the profile only. The rules service
does not publish to the event stream, so no ``segment.entered`` event is
emitted: the answer names the segments the call actually entered and left,
for a caller that wants to feed them through ingest as events (the journey
engine does, so that segment-entered triggers and wait-until steps see
them). Profile events that pass through ingest reach journeys as usual.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from overture.rules.v1 import profile_service_pb2
from overture_runtime.clock import Clock
from overture_runtime.db import insert_ignore
from overture_runtime.errors import Violations
from overture_runtime.idempotency import Idempotency
from overture_runtime.protojson import struct_to_dict

from .profiles import TRAITS_MAX_KEYS, ProfileStore
from .segments import sync_segments
from .tables import profiles

__all__ = ["TAGS_MAX", "ProfileChange", "ProfileState", "ProfileUpdater", "apply_change", "conflicts"]

TAGS_MAX = 256
"""The most tags a profile may have."""
_EXACT = 2**53
"""Past this, a double no longer holds every integer: sums stay floats."""


@dataclass(frozen=True)
class ProfileChange:
    """What one UpdateProfile call changes."""

    set_traits: Mapping[str, Any] = field(default_factory=dict)
    """Traits to set; a null value removes the trait."""
    unset_traits: Sequence[str] = ()
    """Traits to remove."""
    increment: Mapping[str, float] = field(default_factory=dict)
    """Numeric traits to add to (a missing trait counts as 0)."""
    add_tags: Sequence[str] = ()
    """Tags to add."""
    remove_tags: Sequence[str] = ()
    """Tags to remove."""
    enter_segments: Sequence[str] = ()
    """Segments to enter."""
    exit_segments: Sequence[str] = ()
    """Segments to leave."""

    @classmethod
    def of(cls, request: profile_service_pb2.UpdateProfileRequest) -> ProfileChange:
        """The change an UpdateProfile request asks for."""
        return cls(set_traits=struct_to_dict(request.set_traits), unset_traits=tuple(request.unset_traits),
                   increment=dict(request.increment), add_tags=tuple(request.add_tags), remove_tags=tuple(request.remove_tags),
                   enter_segments=tuple(request.enter_segments), exit_segments=tuple(request.exit_segments))


@dataclass
class ProfileState:
    """The parts of a profile a change may touch, as stored."""

    traits: dict[str, Any]
    """The traits."""
    tags: list[str]
    """The tags, in the order they were added."""
    segments: list[str]
    """The segments, in the order they were entered."""
    entered: list[str] = field(default_factory=list)
    """Segments the change entered (the subject was not in them)."""
    exited: list[str] = field(default_factory=list)
    """Segments the change left (the subject was in them)."""


def apply_change(state: ProfileState, change: ProfileChange) -> None:
    """Apply *change* to *state*, in place. Raises :class:`InvalidArgument`
    when a trait to add to holds something that is not a number, a sum is
    not finite, or the profile would hold too many traits or tags; then
    *state* must be thrown away."""
    v = Violations()
    traits = state.traits
    for name, value in change.set_traits.items():
        if value is None:
            traits.pop(name, None)
        else:
            traits[name] = value
    for name in change.unset_traits:
        traits.pop(name, None)
    for name, amount in change.increment.items():
        current = traits.get(name, 0)
        if isinstance(current, bool) or not isinstance(current, (int, float)):
            v.add(f"increment[{name}]", f"trait {name!r} is not a number, so it cannot be added to", "NOT_A_NUMBER")
            continue
        total = current + amount
        if not math.isfinite(total):
            v.add(f"increment[{name}]", f"adding to trait {name!r} would overflow", "OUT_OF_RANGE")
            continue
        # Integers stay integers, as long as a double still holds them exactly.
        traits[name] = int(total) if float(total).is_integer() and abs(total) < _EXACT else float(total)
    if len(traits) > TRAITS_MAX_KEYS:
        v.add("set_traits", f"a profile holds at most {TRAITS_MAX_KEYS} traits", "TOO_MANY")
    state.tags = _added_removed(state.tags, change.add_tags, change.remove_tags)
    if len(state.tags) > TAGS_MAX:
        v.add("add_tags", f"a profile holds at most {TAGS_MAX} tags", "TOO_MANY")
    before = set(state.segments)
    state.segments = _added_removed(state.segments, change.enter_segments, change.exit_segments)
    after = set(state.segments)
    state.entered = [s for s in state.segments if s not in before]
    state.exited = [s for s in dict.fromkeys(change.exit_segments) if s in before and s not in after]
    v.raise_if_any("the profile change is invalid")


def _added_removed(current: Sequence[str], add: Sequence[str], remove: Sequence[str]) -> list[str]:
    gone = set(remove)
    kept = [x for x in current if x not in gone]
    return kept + [x for x in dict.fromkeys(add) if x not in kept and x not in gone]


def conflicts(change: ProfileChange) -> list[tuple[str, str]]:
    """(field path, what it conflicts with) for names a change both sets and
    removes: a request must say one thing about each trait, tag and segment."""
    found: list[tuple[str, str]] = []
    pairs: list[tuple[str, Sequence[str], str, set[str]]] = [
        ("unset_traits", change.unset_traits, "set_traits", set(change.set_traits)),
        ("increment", list(change.increment), "set_traits or unset_traits", set(change.set_traits) | set(change.unset_traits)),
        ("remove_tags", change.remove_tags, "add_tags", set(change.add_tags)),
        ("exit_segments", change.exit_segments, "enter_segments", set(change.enter_segments)),
    ]
    for where, names, other, taken in pairs:
        for i, name in enumerate(names):
            if name in taken:
                found.append((f"{where}[{i}]" if where != "increment" else f"increment[{name}]", f"{name!r} is also in {other}"))
    return found


class ProfileUpdater:
    """Makes UpdateProfile changes."""

    def __init__(self, store: ProfileStore, idempotency: Idempotency, clock: Clock) -> None:
        self._store = store
        self._idempotency = idempotency
        self._clock = clock

    async def update(self, *, tenant: str, request: profile_service_pb2.UpdateProfileRequest) -> profile_service_pb2.UpdateProfileResponse:
        """Make the change of *request* once per its ``request_id``; the
        answer of the first call, stored with the change, for a repeat."""
        change = ProfileChange.of(request)
        subject_id = request.subject_id
        key = (profiles.c.tenant == tenant) & (profiles.c.subject_id == subject_id)

        async def change_profile(conn: AsyncConnection) -> profile_service_pb2.UpdateProfileResponse:
            now = self._clock.now()
            await conn.execute(insert_ignore(conn, profiles, index_elements=["tenant", "subject_id"]).values(
                tenant=tenant, subject_id=subject_id, traits={}, segments=[], suppression_lists=[], tags=[], timezone="",
                erased=False, create_time=now, update_time=now))
            query = sa.select(profiles.c.traits, profiles.c.tags, profiles.c.segments, profiles.c.erased).where(key)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()
            row = (await conn.execute(query)).one()
            state = ProfileState(traits=dict(row.traits), tags=list(row.tags), segments=list(row.segments))
            if not row.erased:  # an erased profile takes no change
                apply_change(state, change)
                await conn.execute(profiles.update().where(key).values(
                    traits=state.traits, tags=state.tags, segments=state.segments, update_time=now))
                await sync_segments(conn, tenant, {subject_id: (list(row.segments), state.segments)})
            profile = (await ProfileStore.load_protos(conn, tenant, [subject_id]))[subject_id]
            return profile_service_pb2.UpdateProfileResponse(profile=profile, entered_segments=state.entered,
                                                             exited_segments=state.exited)

        response = await self._idempotency.run_in_transaction(
            tenant=tenant, method="UpdateProfile", request_id=request.request_id, request=request,
            response_type=profile_service_pb2.UpdateProfileResponse, compute=change_profile,
        )
        await self._store.invalidate(tenant, [subject_id])
        return response
