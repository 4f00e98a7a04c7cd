"""Properties of Evaluate over random profiles, caps and message sequences
(hypothesis), on real Redis and PostgreSQL: it never lets more messages
through than a cap allows, and never allows marketing without consent."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overture.rules.v1 import decision_pb2 as D
from overture.rules.v1 import rule_set_pb2 as RS
from overture_runtime.config import Settings

from .rules_support import Rules, cap, running_rules, spec, utc

START = utc(2026, 3, 1)
caps_strategy = st.lists(
    st.builds(
        lambda i, limit, window, hours, scope: cap(f"c{i}", limit, window=window, hours=hours, scope=scope, tag="promo" if scope == "tag" else ""),
        st.integers(0, 9), st.integers(1, 4), st.sampled_from(["rolling", "day", "week"]), st.sampled_from([1, 6, 24, 72]),
        st.sampled_from(["channel", "all", "tag"]),
    ),
    min_size=1, max_size=3, unique_by=lambda c: c.id,
)
messages = st.lists(
    st.tuples(st.integers(0, 7 * 24 * 60), st.integers(0, 100), st.booleans(), st.booleans(), st.booleans()),
    min_size=1, max_size=20,
)


@pytest.fixture
async def svc(make_settings: Callable[..., Settings]) -> AsyncIterator[Rules]:
    async with running_rules(make_settings) as running:
        yield running


def _in_window(cap_pb: RS.FrequencyCap, start: dt.datetime, end: dt.datetime, when: dt.datetime) -> bool:
    return start <= when <= end


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(caps=caps_strategy, consent=st.sampled_from(["granted", "revoked", "missing"]), sends=messages, zone=st.sampled_from(["UTC", "America/New_York", "Asia/Kolkata"]))
async def test_caps_never_overflow_and_consent_is_never_skipped(
    svc: Rules, caps: list[RS.FrequencyCap], consent: str, sends: list[tuple[int, int, bool, bool, bool]], zone: str,
) -> None:
    """Whatever the caps, consent and message sequence, committed sends never exceed any cap window, and nothing is allowed without consent."""
    name = f"p{uuid.uuid4().hex[:12]}"
    subject = f"s-{uuid.uuid4().hex}"
    await svc.publish(name, spec(caps=caps))
    await svc.profile(subject, timezone=zone)
    if consent != "missing":
        await svc.consent(subject, granted=consent == "granted")
    committed: list[tuple[dt.datetime, bool]] = []  # (time, tagged promo)
    ordered = sorted(sends)
    # Messages at the same minute race each other; others follow in time order.
    by_minute: dict[int, list[tuple[int, int, bool, bool, bool]]] = {}
    for item in ordered:
        by_minute.setdefault(item[0], []).append(item)
    for minute, group in sorted(by_minute.items()):
        now = START + dt.timedelta(minutes=minute)
        decisions = await asyncio.gather(*(
            svc.evaluate(rule_set=name, subject_id=subject, mode=D.EVALUATION_MODE_RESERVE, priority=priority, now=now,
                         tags=["promo"] if promo else [])
            for _, priority, _, _, promo in group
        ))
        for decision, (_, _, commit, _, promo) in zip(decisions, group, strict=True):
            if decision.allowed:
                assert consent == "granted", decision.summary
            if not decision.allowed:
                continue
            mode = D.EVALUATION_MODE_COMMIT if commit else D.EVALUATION_MODE_RELEASE
            settled = await svc.evaluate(decision_id=decision.decision_id, mode=mode, now=now)
            if settled.reservation_state == D.RESERVATION_STATE_COMMITTED:
                committed.append((now, promo))
                for counter in decision.cap_counters:
                    cap_pb = next(c for c in caps if c.id == counter.cap_id)
                    start, end = counter.window_start.ToDatetime(tzinfo=dt.UTC), counter.window_end.ToDatetime(tzinfo=dt.UTC)
                    counted = [t for t, tagged in committed
                               if _in_window(cap_pb, start, end, t) and (cap_pb.scope != RS.CAP_SCOPE_TAG or tagged)]
                    assert len(counted) <= cap_pb.limit, (cap_pb, counted)
