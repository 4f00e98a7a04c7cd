"""Frequency caps under concurrency, on real Redis and PostgreSQL: the check
and the reservation are one atomic step, higher priority wins a race, and
reservations are settled or expire."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import AsyncIterator, Callable

import pytest

from overture.rules.v1 import decision_pb2 as D
from overture.rules.v1 import rules_service_pb2 as R
from overture_rules.profile_cache import SubjectKeys
from overture_runtime.config import Settings
from tests.conftest import TENANT

from .rules_support import MD, Rules, cap, running_rules, spec, utc


@pytest.fixture
async def svc(make_settings: Callable[..., Settings]) -> AsyncIterator[Rules]:
    async with running_rules(make_settings) as running:
        yield running


async def test_two_hundred_concurrent_reservations_leave_exactly_the_three_highest_priorities(svc: Rules) -> None:
    """200 concurrent RESERVE calls for one subject against a cap of 3 leave exactly 3 slots, held by the highest priorities."""
    await svc.publish("capped", spec(caps=[cap("three-a-day", 3)]))
    await svc.consent("racer")
    priorities = [i % 101 for i in range(200)]
    random.Random(7).shuffle(priorities)
    decisions = await asyncio.gather(*(
        svc.evaluate(rule_set="capped", subject_id="racer", mode=D.EVALUATION_MODE_RESERVE, priority=p, decision_id=f"race-{i}")
        for i, p in enumerate(priorities)
    ))
    settled = await asyncio.gather(*(svc.evaluate(decision_id=d.decision_id, mode=D.EVALUATION_MODE_COMMIT) for d in decisions if d.allowed))
    committed = [d for d in settled if d.reservation_state == D.RESERVATION_STATE_COMMITTED]
    assert len(committed) == 3
    assert sorted(d.priority for d in committed) == sorted(priorities)[-3:]
    preempted = [d for d in settled if d.reservation_state == D.RESERVATION_STATE_PREEMPTED]
    assert all(d.preempted_by for d in preempted)
    stored = [await svc.evaluate(decision_id=d.decision_id, mode=D.EVALUATION_MODE_COMMIT) for d in decisions]
    assert sum(d.reservation_state == D.RESERVATION_STATE_COMMITTED for d in stored) == 3
    # A fourth message, even of the top priority, finds the cap full of committed (unpreemptable) sends.
    late = await svc.evaluate(rule_set="capped", subject_id="racer", mode=D.EVALUATION_MODE_RESERVE, priority=100)
    assert not late.allowed and "three-a-day" in late.summary


async def test_reserve_is_idempotent_on_the_decision_id(svc: Rules) -> None:
    """Repeating a RESERVE with the same decision id returns the first decision and takes no second slot."""
    await svc.publish("capped", spec(caps=[cap("two", 2)]))
    await svc.consent("u")
    first = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE, decision_id="same")
    again = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE, decision_id="same")
    assert first == again and first.reservation_state == D.RESERVATION_STATE_HELD
    other = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE)
    assert other.allowed and [c.count for c in other.cap_counters] == [1]


async def test_check_mode_reserves_nothing_and_release_frees_the_slot(svc: Rules) -> None:
    """CHECK counts without reserving; RELEASE gives a reserved slot back; the counters are in the record."""
    await svc.publish("capped", spec(caps=[cap("one", 1)]))
    await svc.consent("u")
    for _ in range(3):
        checked = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_CHECK)
        assert checked.allowed and checked.reservation_state == D.RESERVATION_STATE_UNSPECIFIED
    held = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE)
    blocked = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE)
    assert held.allowed and not blocked.allowed
    assert [(c.cap_id, c.count, c.limit) for c in blocked.cap_counters] == [("one", 1, 1)]
    released = await svc.evaluate(decision_id=held.decision_id, mode=D.EVALUATION_MODE_RELEASE)
    assert released.reservation_state == D.RESERVATION_STATE_RELEASED
    assert (await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE)).allowed


async def test_unsettled_reservations_expire(make_settings: Callable[..., Settings]) -> None:
    """A reservation that is neither committed nor released stops counting after the hold time, and cannot be committed."""
    async with running_rules(make_settings, reservation_ttl_seconds=60) as svc:
        await svc.publish("capped", spec(caps=[cap("one", 1, hours=24 * 7)]))
        await svc.consent("u")
        start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        held = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE, now=start)
        assert held.allowed
        blocked = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE, now=start + dt.timedelta(seconds=30))
        assert not blocked.allowed
        later = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE, now=start + dt.timedelta(seconds=61))
        assert later.allowed
        expired = await svc.evaluate(decision_id=held.decision_id, mode=D.EVALUATION_MODE_COMMIT, now=start + dt.timedelta(seconds=61))
        assert expired.reservation_state == D.RESERVATION_STATE_EXPIRED


async def test_channel_all_and_tag_caps_count_what_they_scope(svc: Rules) -> None:
    """A tag cap counts only tagged messages; an all-channels cap counts every message."""
    await svc.publish("capped", spec(caps=[cap("promo", 1, scope="tag", tag="promo"), cap("all", 3, scope="all")]))
    await svc.consent("u")
    now = utc(2026, 6, 1, 12)

    async def send(*tags: str) -> D.Decision:
        decision = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE, tags=list(tags), now=now)
        if decision.allowed:
            await svc.evaluate(decision_id=decision.decision_id, mode=D.EVALUATION_MODE_COMMIT, now=now)
        return decision

    assert (await send("promo")).allowed
    second_promo = await send("promo")
    assert not second_promo.allowed and "promo" in second_promo.summary
    assert (await send()).allowed
    assert (await send("news")).allowed
    fourth = await send()
    assert not fourth.allowed and "frequency cap all reached: 3 of 3" in fourth.summary


async def test_transactional_messages_are_not_capped(svc: Rules) -> None:
    """Transactional messages skip caps (and count against none)."""
    await svc.publish("capped", spec(caps=[cap("one", 1)]))
    for _ in range(3):
        decision = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE, category=2)
        assert decision.allowed
        assert [v.outcome for v in decision.verdicts if v.kind == D.VERDICT_KIND_FREQUENCY_CAP] == [D.VERDICT_OUTCOME_SKIP]


async def test_reserve_and_commit_takes_a_slot_no_higher_priority_can_preempt(svc: Rules) -> None:
    """RESERVE_AND_COMMIT counts at once as committed: a later top-priority RESERVE is denied, not preempting it."""
    await svc.publish("capped", spec(caps=[cap("one", 1)]))
    await svc.consent("u")
    taken = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE_AND_COMMIT, priority=0, decision_id="now")
    assert taken.allowed and taken.reservation_state == D.RESERVATION_STATE_COMMITTED
    late = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE, priority=100)
    assert not late.allowed and not late.preempted_by and "frequency cap one reached" in late.summary
    again = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE_AND_COMMIT, decision_id="now")
    assert again == taken  # idempotent on the decision id: no second slot
    stored = await svc.rules.GetDecision(R.GetDecisionRequest(decision_id="now"), metadata=MD)
    assert stored.decision.reservation_state == D.RESERVATION_STATE_COMMITTED


async def test_reserve_and_commit_preempts_a_lower_held_reservation_and_release_returns_its_slot(svc: Rules) -> None:
    """RESERVE_AND_COMMIT preempts a held lower-priority reservation like RESERVE, and RELEASE gives its committed slot back."""
    await svc.publish("capped", spec(caps=[cap("one", 1)]))
    await svc.consent("u")
    held = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE, priority=1)
    urgent = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE_AND_COMMIT, priority=50)
    assert urgent.allowed and urgent.reservation_state == D.RESERVATION_STATE_COMMITTED
    lost = await svc.evaluate(decision_id=held.decision_id, mode=D.EVALUATION_MODE_COMMIT)
    assert lost.reservation_state == D.RESERVATION_STATE_PREEMPTED and lost.preempted_by == urgent.decision_id
    released = await svc.evaluate(decision_id=urgent.decision_id, mode=D.EVALUATION_MODE_RELEASE)
    assert released.reservation_state == D.RESERVATION_STATE_RELEASED
    assert (await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE_AND_COMMIT)).allowed


async def test_a_batch_settles_many_reservations_and_answers_each(svc: Rules) -> None:
    """One EvaluateBatch commits and releases many reservations, answering each in order, an unknown id on its own."""
    await svc.publish("capped", spec(caps=[cap("five", 5)]))
    subjects = [f"s{i}" for i in range(6)]
    for s in subjects:
        await svc.consent(s)
    held = [await svc.evaluate(rule_set="capped", subject_id=s, mode=D.EVALUATION_MODE_RESERVE) for s in subjects]
    modes = [D.EVALUATION_MODE_COMMIT, D.EVALUATION_MODE_RELEASE] * 3
    requests = [R.EvaluateRequest(decision_id=d.decision_id, mode=m) for d, m in zip(held, modes, strict=True)]
    requests.append(R.EvaluateRequest(decision_id="no-such-decision", mode=D.EVALUATION_MODE_COMMIT))
    response = await svc.rules.EvaluateBatch(R.EvaluateBatchRequest(requests=requests), metadata=MD)
    states = [r.decision.reservation_state for r in response.results[:6]]
    assert states == [D.RESERVATION_STATE_COMMITTED, D.RESERVATION_STATE_RELEASED] * 3
    unknown = response.results[6]
    assert not unknown.HasField("decision")
    assert (unknown.violations[0].field, unknown.violations[0].reason) == ("decision_id", "DECISION_NOT_FOUND")
    for d, state in zip(held, states, strict=True):
        stored = await svc.rules.GetDecision(R.GetDecisionRequest(decision_id=d.decision_id), metadata=MD)
        assert stored.decision.reservation_state == state


async def test_a_decision_reads_only_the_entries_that_count(svc: Rules) -> None:
    """Refused, released and preempted entries leave the sorted set each decision reads (they are kept
    apart only to be pruned), so a subject refused again and again costs no more to decide for; the counts
    stay those of the held and committed entries."""
    await svc.publish("capped", spec(caps=[cap("two", 2)]))
    await svc.consent("u")
    redis, keys = svc.app.redis, svc.app.keys
    counted, others, meta = (keys.subject(TENANT, "u", "caps", part) for part in "zoh")
    committed = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE_AND_COMMIT)
    low = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE, priority=1)
    refused = [await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE) for _ in range(60)]
    assert committed.allowed and low.allowed and not any(d.allowed for d in refused)
    assert (await redis.zcount(counted, "(0", "+inf"), await redis.zcard(others), await redis.hlen(meta)) == (2, 60, 62)
    high = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE, priority=9)
    assert high.allowed and [(c.count, c.limit) for c in high.cap_counters] == [(2, 2)]
    preempted = await svc.evaluate(decision_id=low.decision_id, mode=D.EVALUATION_MODE_COMMIT)
    assert preempted.reservation_state == D.RESERVATION_STATE_PREEMPTED
    await svc.evaluate(decision_id=committed.decision_id, mode=D.EVALUATION_MODE_RELEASE)
    assert set(await redis.zrangebyscore(counted, "(0", "+inf")) == {high.decision_id.encode()}
    assert await redis.zcard(others) == 62
    after = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE)
    assert after.allowed and [c.count for c in after.cap_counters] == [1]
    again = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE, decision_id=refused[0].decision_id)
    assert again == refused[0]  # a refused decision is still found by its id


async def test_entries_that_stopped_counting_under_the_previous_ledger_are_moved_when_met(svc: Rules) -> None:
    """A ledger written before refused entries were kept apart (every entry in the one sorted set) still
    counts right, and its refused and released entries move out of the set as a decision meets them."""
    await svc.publish("capped", spec(caps=[cap("two", 2)]))
    await svc.consent("u")
    redis, keys = svc.app.redis, svc.app.keys
    counted, others, meta = (keys.subject(TENANT, "u", "caps", part) for part in "zoh")
    kept = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE_AND_COMMIT)
    freed = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE_AND_COMMIT)
    refused = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE)
    await svc.evaluate(decision_id=freed.decision_id, mode=D.EVALUATION_MODE_RELEASE)
    assert not refused.allowed
    # As the previous ledger left them: the refused and the released entry in the counted set too, and
    # none of the sets of this version (the held entries', the channels') nor their marker.
    for entry in await redis.zrange(others, 0, -1, withscores=True):
        await redis.zadd(counted, {entry[0]: entry[1]})
    await redis.delete(others, *SubjectKeys.of(keys, TENANT, "u").ledger[3:])
    await redis.zrem(counted, "~")
    assert await redis.zcard(counted) == 3 and await redis.hlen(meta) == 3
    decision = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE)
    assert decision.allowed and [c.count for c in decision.cap_counters] == [1]
    assert set(await redis.zrangebyscore(counted, "(0", "+inf")) == {kept.decision_id.encode(), decision.decision_id.encode()}
    assert set(await redis.zrange(others, 0, -1)) == {freed.decision_id.encode(), refused.decision_id.encode()}
