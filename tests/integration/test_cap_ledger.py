"""The frequency-cap ledger's scripts against a model of what they promise, on
a private redis-server: random reservations, commits, releases, replays and
checks, with expiring holds, priority preemption and the horizon, answer as
the model does; a ledger the previous script version wrote, or is still
writing during a rolling deploy, never lets a cap be exceeded; and a
decision's work does not grow with what the subject was sent."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from overture.common.v1 import messaging_pb2 as M
from overture.rules.v1 import decision_pb2 as D
from overture.rules.v1 import rule_set_pb2 as R
from overture_rules.caps import CapLedger, CapWindow
from overture_rules.profile_cache import SubjectKeys
from overture_rules.scripts import Script, run_scripts
from overture_runtime.clock import EPOCH
from overture_runtime.redis import Keys

HOLD_S, RETENTION_S = 8, 90
KEYS = Keys("ledger-test")
CHANNELS = {"email": M.CHANNEL_EMAIL, "sms": M.CHANNEL_SMS}
STATES = {"h": D.RESERVATION_STATE_HELD, "c": D.RESERVATION_STATE_COMMITTED, "r": D.RESERVATION_STATE_RELEASED,
          "x": D.RESERVATION_STATE_EXPIRED, "p": D.RESERVATION_STATE_PREEMPTED}
_PREVIOUS_FUNCTIONS = (Path(__file__).parent / "data" / "caps_before_channel_sets.lua").read_text()
_PREVIOUS_DECIDE = Script(_PREVIOUS_FUNCTIONS + "\nreturn count_or_reserve(KEYS[1], KEYS[3], KEYS[2], ARGV, 0)\n")
_PREVIOUS_SETTLE = Script(_PREVIOUS_FUNCTIONS + "\nreturn settle(KEYS[1], KEYS[3], KEYS[2], ARGV[1], tonumber(ARGV[2]), ARGV[3])\n")
_PREVIOUS_KEYS = [KEYS.subject("t", "s", "caps", part) for part in "zho"]
"""The ledger of the version before the channel sets (z, h and o only), as a replica not yet upgraded runs it."""


@dataclass(frozen=True)
class Cap:
    id: str
    kind: str  # a all, c channel, t tag
    value: str
    limit: int
    window_s: int

    def counts(self, channel: str, tags: tuple[str, ...]) -> bool:
        return self.kind == "a" or (self.kind == "c" and channel == self.value) or (self.kind == "t" and self.value in tags)

    def window(self, now_s: int) -> CapWindow:
        scope = {"a": R.CAP_SCOPE_ALL_CHANNELS, "c": R.CAP_SCOPE_CHANNEL, "t": R.CAP_SCOPE_TAG}[self.kind]
        pb = R.FrequencyCap(id=self.id, scope=scope, limit=self.limit)
        if self.kind == "c":
            pb.channel = CHANNELS[self.value]
        elif self.kind == "t":
            pb.tag = self.value
        return CapWindow(pb, _at(now_s - self.window_s), _at(now_s))


@dataclass
class Entry:
    state: str
    prio: int
    t: int
    channel: str
    tags: tuple[str, ...]
    by: str = ""

    @property
    def expires(self) -> int:
        return self.t + HOLD_S


class Model:
    """What the ledger promises, in plain Python (times in seconds)."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def _tidy(self, now: int) -> None:
        self.entries = {i: e for i, e in self.entries.items() if e.t >= now - RETENTION_S}
        for e in self.entries.values():
            if e.state == "h" and e.expires < now:
                e.state = "x"

    def decide(self, op: str, now: int, decision_id: str, prio: int, channel: str, tags: tuple[str, ...],
               caps: list[Cap]) -> tuple[bool, bool, list[int], set[str]]:
        """(allowed, replayed, counts, preempted) of a check, reserve or commit."""
        self._tidy(now)
        previous = self.entries.get(decision_id)
        counting = [(i, e) for i, e in self.entries.items() if i != decision_id and e.state in "hc"]
        counts = [sum(1 for _, e in counting if e.t >= now - c.window_s and c.counts(e.channel, e.tags)) for c in caps]
        reserving = op != "check"
        allowed, victims = True, {}
        for cap, count in zip(caps, counts, strict=True):
            if count < cap.limit:
                continue
            victim: tuple[str, Entry] | None = None
            if reserving and previous is None:
                for i, e in sorted(counting, key=lambda ie: (ie[1].t, ie[0])):
                    if e.state == "h" and e.prio < prio and e.t >= now - cap.window_s and cap.counts(e.channel, e.tags):
                        if victim is None or e.prio < victim[1].prio or (e.prio == victim[1].prio and e.t > victim[1].t):
                            victim = (i, e)
            if victim is None:
                allowed = False
            else:
                victims[victim[0]] = victim[1]
        if not reserving:
            return allowed, previous is not None, counts, set()
        if previous is not None:
            return previous.state in "hc", True, counts, set()
        if not allowed:
            victims = {}
        for e in victims.values():
            e.state, e.by = "p", decision_id
        self.entries[decision_id] = Entry(("c" if op == "commit" else "h") if allowed else "d", prio, now, channel, tags)
        return allowed, False, counts, set(victims)

    def settle(self, commit: bool, now: int, decision_id: str) -> tuple[int, str]:
        e = self.entries.get(decision_id)
        if e is None:
            return D.RESERVATION_STATE_UNSPECIFIED, ""
        if e.state == "h" and e.expires < now:
            e.state = "x"
        elif commit and e.state == "h":
            e.state = "c"
        elif not commit and e.state in "hc":
            e.state = "r"
        return STATES.get(e.state, D.RESERVATION_STATE_UNSPECIFIED), e.by


def _at(seconds: int) -> dt.datetime:
    return EPOCH + dt.timedelta(seconds=1_800_000_000 + seconds)


@pytest.fixture
async def redis(throwaway_redis: Callable[[], str]) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(throwaway_redis())
    try:
        yield client
    finally:
        await client.aclose()


def _ledger(redis: aioredis.Redis) -> CapLedger:
    return CapLedger(redis, KEYS, hold=dt.timedelta(seconds=HOLD_S), retention=dt.timedelta(seconds=RETENTION_S))


class Replica:
    """One rules replica's ledger calls for one subject: this version's scripts as the rules service runs them
    (``decide.lua`` for a decision, the ledger's own script to settle), or the previous version's."""

    def __init__(self, redis: aioredis.Redis, *, previous: bool = False) -> None:
        self.redis, self.ledger, self.previous = redis, _ledger(redis), previous
        self.generation = ""
        """The subject's profile generation, as decide.lua last reported it."""

    async def _run(self, command: tuple[Script, tuple[Any, ...]]) -> Any:
        (reply,) = await run_scripts(self.redis, [command])
        return reply

    async def decide(self, op: str, now: int, decision_id: str, prio: int, channel: str, tags: tuple[str, ...],
                     caps: list[Cap]) -> tuple[bool, bool, list[int], set[str]]:
        windows = [c.window(now) for c in caps]
        args = self.ledger.args(op, decision_id=decision_id, priority=prio, channel=CHANNELS[channel], tags=tags, windows=windows,
                                now=_at(now))
        if self.previous:
            reply = await self._run((_PREVIOUS_DECIDE, _PREVIOUS_DECIDE.command(_PREVIOUS_KEYS, args)))
        else:
            while True:  # as a decision does: the ledger step runs only once the profile generation it read is current
                outcome, generation, *rest = await self._run(CapLedger.decide_command(
                    SubjectKeys.of(KEYS, "t", "s"), generation=self.generation, generation_ttl_ms=3_600_000, args=args))
                if outcome == b"ok":
                    reply = rest[0]
                    break
                self.generation = generation.decode()
        result = CapLedger.parse(reply, windows)
        return result.allowed, result.replayed, [c.count for c in result.counters], set(result.preempted)

    async def settle(self, commit: bool, now: int, decision_id: str) -> tuple[int, str]:
        if self.previous:
            args = ["commit" if commit else "release", int(_at(now).timestamp() * 1000), decision_id]
            return CapLedger.settled(await self._run((_PREVIOUS_SETTLE, _PREVIOUS_SETTLE.command(_PREVIOUS_KEYS, args))))
        return CapLedger.settled(await self._run(self.ledger.settle_command("t", "s", decision_id, commit=commit, now=_at(now))))


caps_strategy = st.lists(
    st.builds(Cap, st.just(""), st.sampled_from("act"), st.just(""), st.integers(1, 3), st.sampled_from([5, 20, 60])),
    min_size=1, max_size=3,
).map(lambda caps: [Cap(f"cap{i}", c.kind, {"a": "", "c": "email", "t": "promo"}[c.kind], c.limit, c.window_s) for i, c in enumerate(caps)])
ops_strategy = st.lists(
    st.tuples(
        st.sampled_from(["reserve", "reserve", "commit", "check", "settle-commit", "settle-release", "replay"]),
        st.sampled_from([0, 0, 0, 1, 2, 5, 9]),  # seconds since the previous step: ties are common
        st.integers(0, 2),  # priority
        st.sampled_from(sorted(CHANNELS)),
        st.sampled_from([(), ("promo",), ("news",), ("news", "promo")]),
        st.integers(0, 1000),  # which earlier decision a settlement or replay names
        st.booleans(),  # in the rolling-deploy test: whether the previous version's replica makes this call
    ),
    min_size=8, max_size=60,
)


def _applicable(caps: list[Cap], channel: str, tags: tuple[str, ...]) -> list[Cap]:
    """The caps a message counts against (as plan_caps picks them)."""
    return [c for c in caps if c.kind == "a" or (c.kind == "c" and c.value == channel) or (c.kind == "t" and c.value in tags)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(caps=caps_strategy, ops=ops_strategy)
@example(caps=[Cap("cap0", "a", "", 2, 60)],  # two holds tie on priority and time: the first in the ledger's order is preempted
         ops=[("reserve", 0, 0, "email", (), 0, False), ("reserve", 0, 0, "email", (), 0, False), ("reserve", 0, 1, "email", (), 0, False)])
async def test_the_ledger_answers_as_its_model(redis: aioredis.Redis, caps: list[Cap], ops: list[tuple[Any, ...]]) -> None:
    """Any sequence of checks, reservations (held or committed as made), replays, commits and releases, with
    holds expiring, priorities preempting and entries passing the horizon, gets the model's every answer."""
    await redis.flushall()
    model, replica = Model(), Replica(redis)
    now, made = 0, []
    for n, (op, step, prio, channel, tags, pick, _) in enumerate(ops):
        now += step
        if op.startswith("settle"):
            if made:
                decision_id = made[pick % len(made)]
                commit = op == "settle-commit"
                assert await replica.settle(commit, now, decision_id) == model.settle(commit, now, decision_id), (n, op, decision_id)
            continue
        decision_id = made[pick % len(made)] if op == "replay" and made else f"d{n}"
        mode = "reserve" if op == "replay" else op
        mine = _applicable(caps, channel, tags)
        expected = model.decide(mode, now, decision_id, prio, channel, tags, mine)
        assert await replica.decide(mode, now, decision_id, prio, channel, tags, mine) == expected, (n, op, decision_id)
        if mode != "check":
            made.append(decision_id)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(caps=caps_strategy, ops=ops_strategy)
async def test_a_rolling_deploy_never_lets_a_cap_be_exceeded(redis: aioredis.Redis, caps: list[Cap], ops: list[tuple[Any, ...]]) -> None:
    """Replicas of the previous version (no channel sets) and of this one, in any interleaving on one ledger:
    whatever each allowed, no cap's window ever holds more held or committed messages than its limit."""
    await redis.flushall()
    replicas = {False: Replica(redis), True: Replica(redis, previous=True)}
    states: dict[str, Entry] = {}  # what the replies said each decision became
    now, made = 0, []
    for n, (op, step, prio, channel, tags, pick, previous) in enumerate(ops):
        now += step
        replica = replicas[previous]
        for e in states.values():
            if e.state == "h" and e.expires < now:
                e.state = "x"
        if op.startswith("settle"):
            if made:
                decision_id = made[pick % len(made)]
                state, _ = await replica.settle(op == "settle-commit", now, decision_id)
                if decision_id in states and state != D.RESERVATION_STATE_UNSPECIFIED:
                    states[decision_id].state = next(k for k, v in STATES.items() if v == state)
            continue
        if op in ("check", "replay"):
            continue
        decision_id = f"d{n}"
        allowed, _, _, preempted = await replica.decide(op, now, decision_id, prio, channel, tags, _applicable(caps, channel, tags))
        for victim in preempted:
            states[victim].state = "p"
        states[decision_id] = Entry(("c" if op == "commit" else "h") if allowed else "d", prio, now, channel, tags)
        made.append(decision_id)
        for cap in caps:
            live = [e for e in states.values() if e.state in "hc" and e.t >= now - cap.window_s and cap.counts(e.channel, e.tags)]
            assert len(live) <= cap.limit, (n, cap, live)


async def _commands_of_one_decision(redis: aioredis.Redis, sent: int) -> int:
    """How many Redis commands the ledger runs to reserve one more email for a subject already sent *sent*
    under caps that admit them all (a channel cap and a cap on everything)."""
    await redis.flushall()
    replica = Replica(redis)
    caps = [Cap("daily-email", "c", "email", 100_000, 60), Cap("everything", "a", "", 100_000, 60)]
    for i in range(sent):
        await replica.decide("commit", 0, f"sent{i}", 0, "email", (), caps)
    await redis.config_resetstat()
    assert (await replica.decide("commit", 1, "next", 0, "email", (), caps))[:3] == (True, False, [sent, sent])
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_evalsha", "cmdstat_config"))


async def test_a_decision_does_no_more_work_after_many_sends(redis: aioredis.Redis) -> None:
    """A channel cap and a cap on everything are counted, not read entry by entry: reserving the next email
    runs the same Redis commands after 300 committed sends as after one (the previous script read each)."""
    assert await _commands_of_one_decision(redis, 300) == await _commands_of_one_decision(redis, 1)


async def test_a_ledger_the_previous_version_wrote_is_rebuilt_once_and_counted(redis: aioredis.Redis) -> None:
    """A subject's ledger written only by the previous version (held, committed, released and refused
    entries; no channel sets, no marker) counts right at the first decision of this version, which fills
    the channel sets and the held set once."""
    caps = [Cap("email-3", "c", "email", 3, 60), Cap("sms-1", "c", "sms", 1, 60)]
    old, new = Replica(redis, previous=True), Replica(redis)
    await redis.flushall()
    assert (await old.decide("commit", 0, "e1", 0, "email", (), caps[:1]))[0]
    assert (await old.decide("reserve", 1, "e2", 1, "email", (), caps[:1]))[0]
    assert (await old.decide("commit", 2, "e3", 0, "email", (), caps[:1]))[0]
    assert not (await old.decide("reserve", 3, "e4", 0, "email", (), caps[:1]))[0]
    assert (await old.decide("commit", 3, "s1", 0, "sms", (), caps[1:]))[0]
    await old.settle(False, 4, "e3")
    counted, held = KEYS.subject("t", "s", "caps", "z"), KEYS.subject("t", "s", "caps", "x")
    assert await redis.zscore(counted, "~") is None and not await redis.exists(held)
    # e1 and the held e2 still count; a higher priority preempts the lowest hold (e2) for the slot it needs.
    assert await new.decide("reserve", 5, "e5", 2, "email", (), caps[:1]) == (True, False, [2], set())
    assert await new.decide("reserve", 6, "e6", 5, "email", (), caps[:1]) == (True, False, [3], {"e2"})
    assert await new.decide("check", 7, "s2", 0, "sms", (), caps[1:]) == (False, False, [1], set())
    assert await redis.zscore(counted, "~") == 0
    assert set(await redis.zrange(KEYS.subject("t", "s", "caps", "c", "email"), 0, -1)) == {b"e1", b"e5", b"e6"}
    assert set(await redis.zrange(held, 0, -1)) == {b"e5", b"e6"}
