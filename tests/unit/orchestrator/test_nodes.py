"""Unit tests of :mod:`overture_orchestrator.nodes`: how a split assigns
subjects, and when each kind of delay ends, across DST changes."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from zoneinfo import ZoneInfo

import pytest
from google.protobuf import timestamp_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from overture.orchestrator.v1 import journey_pb2 as J
from overture_orchestrator.nodes import delay_until, local_time_after, split_branch, subject_zone, trait_time

from .specs import duration, step

UTC = dt.UTC
BERLIN, NEW_YORK = ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York")
NOW = dt.datetime(2024, 6, 5, 12, 0, tzinfo=UTC)  # a Wednesday
SUBJECTS = [f"user-{i}" for i in range(20_000)]


def split(id_: str, *weights: int) -> J.Step:
    """A split step with branches b0, b1, ... of *weights*, the last a holdout."""
    return step(id_, split=J.SplitStep(branches=[J.SplitBranch(name=f"b{i}", weight=w, holdout=i == len(weights) - 1)
                                                 for i, w in enumerate(weights)]))


# --- split_branch ------------------------------------------------------------------


def test_a_subject_always_takes_the_same_branch() -> None:
    """The branch depends only on the journey, the step id and the subject: the same on every call and on a rebuilt step of a new version."""
    first = [split_branch(split("ab", 1, 1, 1), journey="promo", subject_id=s).name for s in SUBJECTS[:2000]]
    rebuilt = split("ab", 1, 1, 1)
    again = [split_branch(rebuilt, journey="promo", subject_id=s).name for s in SUBJECTS[:2000]]
    assert first == again and set(first) == {"b0", "b1", "b2"}


def test_the_journey_and_the_step_each_reshuffle_subjects() -> None:
    """Another journey, or another step id, assigns a 50/50 split afresh: about half the subjects change branch."""
    ab, cd = split("ab", 1, 1), split("cd", 1, 1)
    base = [split_branch(ab, journey="promo", subject_id=s).name for s in SUBJECTS]
    for journey, other in (("other", ab), ("promo", cd)):
        moved = sum(a != split_branch(other, journey=journey, subject_id=s).name for a, s in zip(base, SUBJECTS, strict=True))
        assert abs(moved / len(SUBJECTS) - 0.5) < 0.02


@pytest.mark.parametrize("weights", [(70, 20, 10), (1, 1), (5, 90, 5), (9_999, 1)])
def test_twenty_thousand_subjects_split_by_weight(weights: tuple[int, ...]) -> None:
    """Over 20,000 subjects each branch's share is its weight's share of the total, within 1.5 points."""
    ab = split("ab", *weights)
    counts = Counter(split_branch(ab, journey="promo", subject_id=s).name for s in SUBJECTS)
    for i, weight in enumerate(weights):
        assert abs(counts[f"b{i}"] / len(SUBJECTS) - weight / sum(weights)) < 0.015


def test_two_splits_of_one_journey_are_independent() -> None:
    """The branch a subject takes at one 50/50 split says nothing about the next: each pair of branches gets a quarter."""
    first, second = split("first", 1, 1), split("second", 1, 1)
    pairs = Counter((split_branch(first, journey="promo", subject_id=s).name, split_branch(second, journey="promo", subject_id=s).name)
                    for s in SUBJECTS)
    assert len(pairs) == 4 and all(abs(n / len(SUBJECTS) - 0.25) < 0.015 for n in pairs.values())


def test_the_holdout_branch_is_returned_as_such() -> None:
    """The branch returned is the step's own, so its holdout flag comes with it."""
    taken = {split_branch(split("ab", 1, 1), journey="promo", subject_id=s).holdout for s in SUBJECTS[:100]}
    assert taken == {True, False}


# --- local_time_after ----------------------------------------------------------------


def wall_moments(day: dt.date, at: dt.time, zone: ZoneInfo) -> list[dt.datetime]:
    """The moments (UTC) at which *zone*'s wall clock reads *at* on *day*: none in a DST gap, two in an overlap."""
    found: list[dt.datetime] = []
    for fold in (0, 1):
        local = dt.datetime.combine(day, at, tzinfo=zone).replace(fold=fold)
        moment = local.astimezone(UTC)
        if moment.astimezone(zone).replace(tzinfo=None) == local.replace(tzinfo=None) and moment not in found:
            found.append(moment)
    return found


def expected_local_time(now: dt.datetime, zone: ZoneInfo, at: dt.time, weekdays: frozenset[int]) -> dt.datetime:
    """The spec of local_time_after by enumeration: the earliest moment at or after *now* the wall clock reads *at* on an allowed
    day, where a time a DST gap skips counts as that wall time plus the gap."""
    start = now.astimezone(zone).date()
    moments = []
    for day in (start + dt.timedelta(days=n) for n in range(-1, 9)):
        if not weekdays or day.weekday() in weekdays:
            moments += wall_moments(day, at, zone) or [dt.datetime.combine(day, at, tzinfo=zone).astimezone(UTC)]
    return min(m for m in moments if m >= now)


TRANSITIONS = [dt.datetime(2024, 3, 31, 1, tzinfo=UTC), dt.datetime(2024, 10, 27, 1, tzinfo=UTC),  # Berlin: gap, overlap
               dt.datetime(2024, 3, 10, 7, tzinfo=UTC), dt.datetime(2024, 11, 3, 6, tzinfo=UTC),  # New York: gap, overlap
               dt.datetime(2025, 3, 30, 1, tzinfo=UTC), dt.datetime(2025, 11, 2, 6, tzinfo=UTC)]
nows = st.one_of(
    st.datetimes(min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2035, 1, 1), timezones=st.just(UTC)),
    st.builds(lambda t, s: t + dt.timedelta(seconds=s), st.sampled_from(TRANSITIONS),
              st.integers(-3 * 86_400, 3 * 86_400) | st.integers(-7_200, 7_200)),  # days around a DST change, or its very hours
)
times = st.one_of(st.sampled_from([dt.time(1, 30), dt.time(2, 0), dt.time(2, 30), dt.time(2, 59), dt.time(3, 0)]),
                  st.builds(dt.time, st.integers(0, 23), st.integers(0, 59)))
zones = st.sampled_from([BERLIN, NEW_YORK])
weekday_sets = st.frozensets(st.integers(0, 6), max_size=7)


@settings(max_examples=300, deadline=None)
@given(now=nows, zone=zones, at=times, weekdays=weekday_sets)
def test_a_local_time_is_never_before_now_and_on_an_allowed_day_at_that_wall_time(
        now: dt.datetime, zone: ZoneInfo, at: dt.time, weekdays: frozenset[int]) -> None:
    """The moment is at or after now, on an allowed weekday in the zone, and reads the wall time there (plus the gap on a skipped time)."""
    moment = local_time_after(now, zone, f"{at:%H:%M}", weekdays)
    local = moment.astimezone(zone)
    assert moment >= now
    assert not weekdays or local.weekday() in weekdays
    if local.time() != at:  # only a time a DST gap skips reads otherwise, shifted by the gap
        assert wall_moments(local.date(), at, zone) == []
        assert moment == dt.datetime.combine(local.date(), at, tzinfo=zone).astimezone(UTC)


@settings(max_examples=300, deadline=None)
@given(now=nows, zone=zones, at=times, weekdays=weekday_sets)
def test_a_local_time_is_the_first_such_moment(now: dt.datetime, zone: ZoneInfo, at: dt.time, weekdays: frozenset[int]) -> None:
    """No earlier moment at or after now reads the wall time on an allowed day, the repeated hour of a DST overlap included."""
    assert local_time_after(now, zone, f"{at:%H:%M}", weekdays) == expected_local_time(now, zone, at, weekdays)


@pytest.mark.parametrize(("now", "zone", "at", "weekdays", "expected"), [
    (dt.datetime(2024, 3, 31, 0, 15, tzinfo=UTC), BERLIN, "02:30", "", dt.datetime(2024, 3, 31, 1, 30, tzinfo=UTC)),  # skipped: 03:30 CEST
    (dt.datetime(2024, 10, 26, 22, 0, tzinfo=UTC), BERLIN, "02:30", "", dt.datetime(2024, 10, 27, 0, 30, tzinfo=UTC)),  # first 02:30
    (dt.datetime(2024, 10, 27, 0, 45, tzinfo=UTC), BERLIN, "02:30", "", dt.datetime(2024, 10, 27, 1, 30, tzinfo=UTC)),  # the repeat
    (dt.datetime(2024, 3, 10, 6, 0, tzinfo=UTC), NEW_YORK, "02:15", "", dt.datetime(2024, 3, 10, 7, 15, tzinfo=UTC)),  # 03:15 EDT
    (dt.datetime(2024, 11, 3, 5, 40, tzinfo=UTC), NEW_YORK, "01:30", "", dt.datetime(2024, 11, 3, 6, 30, tzinfo=UTC)),  # 01:30 EST
    (dt.datetime(2024, 6, 7, 8, 0, tzinfo=UTC), BERLIN, "09:00", "01234", dt.datetime(2024, 6, 10, 7, 0, tzinfo=UTC)),  # Fri 10:00 -> Mon
    (dt.datetime(2024, 6, 7, 7, 0, tzinfo=UTC), BERLIN, "09:00", "4", dt.datetime(2024, 6, 7, 7, 0, tzinfo=UTC)),  # exactly now
    (dt.datetime(2024, 6, 7, 7, 1, tzinfo=UTC), BERLIN, "09:00", "4", dt.datetime(2024, 6, 14, 7, 0, tzinfo=UTC)),  # a week on
], ids=["berlin-gap", "berlin-overlap-first", "berlin-overlap-repeat", "new-york-gap", "new-york-overlap-repeat", "weekdays",
        "now", "next-week"])
def test_local_times_across_dst_and_weekdays(now: dt.datetime, zone: ZoneInfo, at: str, weekdays: str, expected: dt.datetime) -> None:
    """Worked examples: skipped times move by the gap, repeated times are taken at their first occurrence not yet past."""
    assert local_time_after(now, zone, at, frozenset(int(d) for d in weekdays)) == expected


# --- delay_until, trait_time, subject_zone ----------------------------------------------------


def wait(kind: J.DelayStep) -> J.Step:
    """A delay step."""
    return step("wait", delay=kind)


def stamp(moment: dt.datetime) -> timestamp_pb2.Timestamp:
    """A Timestamp of *moment*."""
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(moment)
    return value


def test_a_duration_ends_that_long_after_now() -> None:
    """A delay for a duration ends at now plus the duration."""
    assert delay_until(wait(J.DelayStep(duration=duration(hours=36))), now=NOW, profile={}) == NOW + dt.timedelta(hours=36)


@pytest.mark.parametrize(("until", "expected"), [(NOW + dt.timedelta(days=3), NOW + dt.timedelta(days=3)), (NOW - dt.timedelta(days=3), NOW),
                                                 (NOW, NOW)], ids=["future", "past", "now"])
def test_until_a_time_never_ends_before_now(until: dt.datetime, expected: dt.datetime) -> None:
    """A delay until a time ends then, and one whose time has passed does not wait."""
    assert delay_until(wait(J.DelayStep(until=stamp(until))), now=NOW, profile={}) == expected


@pytest.mark.parametrize(("timezone", "expected"), [("America/New_York", dt.datetime(2024, 6, 6, 13, tzinfo=UTC)),
                                                    ("", dt.datetime(2024, 6, 6, 9, tzinfo=UTC)),
                                                    ("Mars/Olympus", dt.datetime(2024, 6, 6, 9, tzinfo=UTC))],
                         ids=["profile-zone", "no-zone", "unknown-zone"])
def test_until_a_local_time_reads_the_subjects_zone(timezone: str, expected: dt.datetime) -> None:
    """A local time is read in the profile's time zone, and in UTC when it has none or an unknown one."""
    kind = J.DelayStep(until_local_time=J.LocalTimeWindow(time="09:00", weekdays=["thu"]))
    assert delay_until(wait(kind), now=NOW, profile={"timezone": timezone}) == expected
    assert subject_zone({"timezone": timezone}) == ZoneInfo(timezone if timezone == "America/New_York" else "UTC")


@pytest.mark.parametrize(("value", "offset_days", "expected"), [
    ("2024-07-01", 0, dt.datetime(2024, 6, 30, 22, tzinfo=UTC)),  # a date: midnight in Berlin
    ("2024-07-01", -7, dt.datetime(2024, 6, 23, 22, tzinfo=UTC)),  # a week before
    ("2024-07-01T09:00:00+02:00", 0, dt.datetime(2024, 7, 1, 7, tzinfo=UTC)),  # a date-time with its offset
    ("2024-07-01T09:00:00Z", 1, dt.datetime(2024, 7, 2, 9, tzinfo=UTC)),
    ("2024-07-01T09:00:00", 0, dt.datetime(2024, 7, 1, 9, tzinfo=UTC)),  # naive: UTC
    ("2024-06-08", -7, NOW),  # a week before a date three days away has passed: no wait
    ("2020-01-01", 0, NOW),
], ids=["date", "date-offset-before", "date-time", "date-time-z-offset-after", "naive", "offset-passed", "past"])
def test_until_a_trait_date(value: str, offset_days: int, expected: dt.datetime) -> None:
    """A trait date is midnight in the subject's zone, a date-time is itself (UTC when naive), plus the offset, never before now."""
    kind = J.DelayStep(until_trait=J.TraitDate(trait="renewal_date", offset=duration(days=offset_days)))
    profile = {"timezone": "Europe/Berlin", "traits": {"renewal_date": value}}
    assert delay_until(wait(kind), now=NOW, profile=profile) == expected


@pytest.mark.parametrize("profile", [{}, {"traits": {}}, {"traits": {"renewal_date": None}}, {"traits": {"renewal_date": 1719792000}},
                                     {"traits": {"renewal_date": "next tuesday"}}, {"traits": {"renewal_date": "2024-13-01"}},
                                     {"traits": {"renewal_date": ""}}, {"traits": {"renewal_date": ["2024-07-01"]}}],
                         ids=["no-traits", "missing", "null", "number", "words", "bad-month", "empty", "list"])
def test_a_missing_or_invalid_trait_date_gives_none(profile: dict[str, object]) -> None:
    """When the trait is missing or not an ISO 8601 string, there is no time: the step takes its `missing` edge."""
    kind = J.DelayStep(until_trait=J.TraitDate(trait="renewal_date", offset=duration(days=-7)))
    assert delay_until(wait(kind), now=NOW, profile=profile) is None
    assert trait_time(profile.get("traits", {}).get("renewal_date"), BERLIN) is None  # type: ignore[attr-defined]


def test_a_trait_date_is_midnight_in_the_given_zone() -> None:
    """trait_time reads a date as midnight in the zone, so New York's midnight is later in UTC than Berlin's."""
    assert trait_time("2024-01-15", NEW_YORK) == dt.datetime(2024, 1, 15, 5, tzinfo=UTC)
    assert trait_time("2024-01-15", BERLIN) == dt.datetime(2024, 1, 14, 23, tzinfo=UTC)
