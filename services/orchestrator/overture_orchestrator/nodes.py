"""What steps compute, apart from any I/O: split branches, and the times
delays wait until. Pure; the executor and the preview both use it, so a
preview takes the path a run would."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from overture.orchestrator.v1 import journey_pb2

__all__ = ["DEFAULT_APPROVAL_TIMEOUT", "WEEKDAYS", "delay_until", "local_time_after", "split_branch", "subject_zone", "trait_time"]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""Weekday names as specs write them, Monday first (``date.weekday()`` order)."""
DEFAULT_APPROVAL_TIMEOUT = dt.timedelta(hours=24)
"""How long an approval waits when its step gives no timeout."""


def split_branch(step: journey_pb2.Step, *, journey: str, subject_id: str) -> journey_pb2.SplitBranch:
    """The branch of a split a subject takes: by weight, deterministically, by
    a hash of the journey, the step and the subject (so a subject lands on the
    same branch on every run and version, and branches are independent of
    one another across steps)."""
    branches = step.split.branches
    total = sum(max(b.weight, 1) for b in branches)
    point = int.from_bytes(hashlib.sha256(f"{journey}\x00{step.id}\x00{subject_id}".encode()).digest()[:8], "big") % total
    for branch in branches:
        point -= max(branch.weight, 1)
        if point < 0:
            return branch
    return branches[-1]


def subject_zone(profile: Mapping[str, Any]) -> ZoneInfo:
    """The subject's time zone: the profile's, else UTC."""
    name = profile.get("timezone") or "UTC"
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def local_time_after(now: dt.datetime, zone: ZoneInfo, at: str, weekdays: frozenset[int] = frozenset()) -> dt.datetime:
    """The first moment at or after *now* that is *at* (``HH:MM``) on the wall
    clock of *zone*, on one of *weekdays* (0 = Monday; empty for any day).
    A time a DST change skips that day is taken as the same wall time plus
    the gap (as :mod:`zoneinfo` resolves it); a time it repeats, at its
    first occurrence not yet past."""
    hour, minute = (int(part) for part in at.split(":"))
    local = now.astimezone(zone)
    for days in range(8):
        day = local.date() + dt.timedelta(days=days)
        if weekdays and day.weekday() not in weekdays:
            continue
        # fold 1 is the repeat of a time an overlap shows twice; on other times
        # it is the same moment, and in a gap an earlier one, so never chosen.
        for fold in (0, 1):
            candidate = dt.datetime.combine(day, dt.time(hour, minute, fold=fold), tzinfo=zone).astimezone(dt.UTC)
            if candidate >= now:
                return candidate
    raise AssertionError("a week always holds an allowed day")  # pragma: no cover - weekdays are checked at publish


def trait_time(value: Any, zone: ZoneInfo) -> dt.datetime | None:
    """An ISO 8601 date (midnight in *zone*) or date-time (UTC when naive) of
    a trait, in UTC; None for anything else."""
    if not isinstance(value, str):
        return None
    try:
        if len(value) == 10:
            return dt.datetime.combine(dt.date.fromisoformat(value), dt.time(), tzinfo=zone).astimezone(dt.UTC)
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)


def delay_until(step: journey_pb2.Step, *, now: dt.datetime, profile: Mapping[str, Any]) -> dt.datetime | None:
    """When a delay step ends (never before *now*); None when it waits until a
    trait date the profile does not hold (the step's ``missing`` edge)."""
    delay = step.delay
    if delay.HasField("until"):
        return max(now, delay.until.ToDatetime(tzinfo=dt.UTC))
    if delay.HasField("until_local_time"):
        days = frozenset(WEEKDAYS.index(d) for d in delay.until_local_time.weekdays)
        return local_time_after(now, subject_zone(profile), delay.until_local_time.time, days)
    if delay.HasField("until_trait"):
        at = trait_time(profile.get("traits", {}).get(delay.until_trait.trait), subject_zone(profile))
        if at is None:
            return None
        return max(now, at + delay.until_trait.offset.ToTimedelta())
    return now + delay.duration.ToTimedelta()
