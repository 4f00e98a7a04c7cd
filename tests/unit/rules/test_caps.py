"""Cap planning: a version's CapPlanner picks the same caps and windows as
plan_caps, whatever the channel, tags, time and zone; counters carry the
windows as Timestamps exactly."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from google.protobuf import timestamp_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from overture.common.v1 import messaging_pb2 as M
from overture.rules.v1 import rule_set_pb2 as R
from overture_rules.caps import CapPlanner, _timestamp, plan_caps

KINDS = [R.CAP_WINDOW_KIND_ROLLING, R.CAP_WINDOW_KIND_CALENDAR_DAY, R.CAP_WINDOW_KIND_CALENDAR_WEEK]
SCOPES = [R.CAP_SCOPE_CHANNEL, R.CAP_SCOPE_ALL_CHANNELS, R.CAP_SCOPE_TAG]
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu"]


@st.composite
def specs(draw: st.DrawFn) -> R.RuleSetSpec:
    spec = R.RuleSetSpec()
    for i in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(KINDS))
        cap = spec.frequency_caps.add(id=f"c{i}", scope=draw(st.sampled_from(SCOPES)), channel=draw(st.sampled_from([M.CHANNEL_EMAIL, M.CHANNEL_SMS])),
                                      tag=draw(st.sampled_from(["promo", "news"])), limit=3, window=R.CapWindow(kind=kind))
        if kind == R.CAP_WINDOW_KIND_ROLLING:
            cap.window.duration.FromSeconds(draw(st.integers(1, 31 * 86_400)))
    return spec


@settings(max_examples=300, deadline=None)
@given(spec=specs(), channel=st.sampled_from([M.CHANNEL_EMAIL, M.CHANNEL_SMS]), tags=st.lists(st.sampled_from(["promo", "news"]), unique=True),
       minutes=st.lists(st.integers(0, 60 * 24 * 400), min_size=1, max_size=4), zone=st.sampled_from(ZONES))
def test_the_planner_plans_what_plan_caps_plans(spec: R.RuleSetSpec, channel: int, tags: list[str], minutes: list[int], zone: str) -> None:
    """For any caps, message and times (across DST changes, repeated so remembered windows are used), the planner equals plan_caps."""
    planner = CapPlanner(spec)
    tz = ZoneInfo(zone)
    for minute in minutes + minutes:
        now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=minute)
        assert planner.plan(channel=channel, tags=tags, now=now, zone=tz) == plan_caps(spec, channel=channel, tags=tags, now=now, zone=tz)


@given(when=st.datetimes(min_value=dt.datetime(1901, 1, 1), max_value=dt.datetime(8999, 1, 1), timezones=st.sampled_from([dt.UTC, ZoneInfo("Asia/Kolkata")])))
def test_window_timestamps_are_those_from_datetime_gives(when: dt.datetime) -> None:
    """A window bound becomes the same Timestamp as Timestamp.FromDatetime makes of it."""
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(when)
    assert _timestamp(when) == expected
