"""Calendar caps and quiet hours follow the recipient's wall clock, across
daylight-saving changes, in two time zones."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable

import pytest

from overture.rules.v1 import decision_pb2 as D
from overture_runtime.config import Settings

from .rules_support import Rules, cap, running_rules, spec, utc


@pytest.fixture
async def svc(make_settings: Callable[..., Settings]) -> AsyncIterator[Rules]:
    async with running_rules(make_settings) as running:
        yield running


async def _send(svc: Rules, subject: str, now: dt.datetime, rule_set: str = "daily") -> D.Decision:
    decision = await svc.evaluate(rule_set=rule_set, subject_id=subject, mode=D.EVALUATION_MODE_RESERVE, now=now)
    if decision.allowed:
        committed = await svc.evaluate(decision_id=decision.decision_id, mode=D.EVALUATION_MODE_COMMIT, now=now)
        assert committed.reservation_state == D.RESERVATION_STATE_COMMITTED
    return decision


@pytest.mark.parametrize(
    ("zone", "before_midnight", "after_midnight", "late_same_day", "next_day", "day_start", "day_end"),
    [
        # New York springs forward on 2025-03-09: that local day is 23 hours long.
        ("America/New_York", utc(2025, 3, 9, 4, 30), utc(2025, 3, 9, 5, 30), utc(2025, 3, 10, 3, 30), utc(2025, 3, 10, 4, 30),
         utc(2025, 3, 9, 5), utc(2025, 3, 10, 4)),
        # Berlin springs forward on 2025-03-30.
        ("Europe/Berlin", utc(2025, 3, 29, 22, 30), utc(2025, 3, 29, 23, 30), utc(2025, 3, 30, 21, 30), utc(2025, 3, 30, 22, 30),
         utc(2025, 3, 29, 23), utc(2025, 3, 30, 22)),
    ],
)
async def test_a_calendar_day_cap_follows_the_local_day_across_dst(
    svc: Rules, zone: str, before_midnight: dt.datetime, after_midnight: dt.datetime, late_same_day: dt.datetime,
    next_day: dt.datetime, day_start: dt.datetime, day_end: dt.datetime,
) -> None:
    """One email per local calendar day: local midnight resets the count, and the DST day is as long as the recipient lives it."""
    await svc.publish("daily", spec(caps=[cap("one-a-day", 1, window="day")]))
    await svc.profile("u", timezone=zone)
    await svc.consent("u")
    assert (await _send(svc, "u", before_midnight)).allowed
    first_of_day = await _send(svc, "u", after_midnight)
    assert first_of_day.allowed
    (counter,) = first_of_day.cap_counters
    assert (counter.window_start.ToDatetime(tzinfo=dt.UTC), counter.window_end.ToDatetime(tzinfo=dt.UTC)) == (day_start, day_end)
    blocked = await _send(svc, "u", late_same_day)
    assert not blocked.allowed and "one-a-day" in blocked.summary
    assert (await _send(svc, "u", next_day)).allowed


async def test_a_calendar_week_cap_starts_on_local_monday(svc: Rules) -> None:
    """A weekly cap counts from Monday 00:00 local time, here across Berlin's DST change."""
    await svc.publish("weekly", spec(caps=[cap("two-a-week", 2, window="week")]))
    await svc.profile("u", timezone="Europe/Berlin")
    await svc.consent("u")
    assert (await _send(svc, "u", utc(2025, 3, 23, 22, 30), "weekly")).allowed  # Sunday 23:30 CET, the week before
    monday = await _send(svc, "u", utc(2025, 3, 23, 23, 30), "weekly")  # Monday 00:30 CET
    (counter,) = monday.cap_counters
    assert counter.count == 0
    assert counter.window_start.ToDatetime(tzinfo=dt.UTC) == utc(2025, 3, 23, 23)
    assert counter.window_end.ToDatetime(tzinfo=dt.UTC) == utc(2025, 3, 30, 22)  # next Monday 00:00 CEST
    assert (await _send(svc, "u", utc(2025, 3, 27, 12), "weekly")).allowed
    assert not (await _send(svc, "u", utc(2025, 3, 30, 21), "weekly")).allowed  # Sunday 23:00 CEST, same week
    assert (await _send(svc, "u", utc(2025, 3, 30, 22, 30), "weekly")).allowed  # Monday again


@pytest.mark.parametrize(
    ("zone", "now", "defer_until"),
    [
        ("America/New_York", utc(2025, 3, 9, 6, 30), utc(2025, 3, 9, 11)),  # 01:30 EST -> 07:00 EDT
        ("Europe/Berlin", utc(2025, 3, 30, 0, 30), utc(2025, 3, 30, 5)),  # 01:30 CET -> 07:00 CEST
        ("America/New_York", utc(2025, 11, 2, 5, 30), utc(2025, 11, 2, 12)),  # 01:30 EDT -> 07:00 EST
        ("Europe/Berlin", utc(2025, 10, 26, 0, 30), utc(2025, 10, 26, 6)),  # 02:30 CEST -> 07:00 CET
        ("America/New_York", utc(2025, 3, 9, 3, 30), utc(2025, 3, 9, 11)),  # 22:30 EST the evening before -> 07:00 EDT
    ],
)
async def test_quiet_hours_defer_to_the_local_end_across_dst(svc: Rules, zone: str, now: dt.datetime, defer_until: dt.datetime) -> None:
    """Inside quiet hours a marketing message is allowed but deferred to the local end of quiet hours, right across DST."""
    await svc.publish("quiet", spec(quiet=("22:00", "07:00")))
    await svc.profile("u", timezone=zone)
    await svc.consent("u")
    decision = await svc.evaluate(rule_set="quiet", subject_id="u", now=now)
    assert decision.allowed
    assert decision.defer_until.ToDatetime(tzinfo=dt.UTC) == defer_until
    assert [v.outcome for v in decision.verdicts if v.kind == D.VERDICT_KIND_QUIET_HOURS] == [D.VERDICT_OUTCOME_DEFER]


async def test_outside_quiet_hours_nothing_is_deferred_and_transactional_ignores_them(svc: Rules) -> None:
    """Outside quiet hours nothing is deferred; transactional messages are never deferred."""
    await svc.publish("quiet", spec(quiet=("22:00", "07:00"), default_tz="Europe/Berlin"))
    await svc.consent("u")
    noon = await svc.evaluate(rule_set="quiet", subject_id="u", now=utc(2025, 7, 1, 10))
    assert noon.allowed and not noon.HasField("defer_until")
    night = await svc.evaluate(rule_set="quiet", subject_id="u", now=utc(2025, 7, 1, 23), category=2)
    assert night.allowed and not night.HasField("defer_until")
