"""Frequency caps: which caps a message counts against, their windows, and
the per-subject ledger in Redis that checks and reserves atomically.

The ledger is one Lua script (``caps.lua``) over a subject's keys, all under
its hash tag (Redis-Cluster-safe): a channel cap counts its channel's sorted
set, so a decision costs the same whatever the subject was sent (ADR 0025).
A decision runs it inside ``decide.lua``, after the check of the profile
view it decided on, in one round trip. A reservation is *held* until it is committed (just
before the send) or released, and expires if neither comes. A message that
finds a cap full only because of held reservations of lower priority
preempts the lowest of them: higher priority wins a race, and the cap is
never exceeded, because only held (unsent) messages are ever preempted.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import redis.asyncio as aioredis
from google.protobuf import timestamp_pb2

from overture.common.v1 import messaging_pb2
from overture.rules.v1 import decision_pb2, rule_set_pb2
from overture_runtime.clock import EPOCH
from overture_runtime.redis import Keys

from .engine import channel_name
from .profile_cache import SubjectKeys, fresh_generation
from .scripts import Script

__all__ = ["DECIDE", "LEDGER", "CapLedger", "CapPlanner", "CapWindow", "LedgerResult", "plan_caps"]

_FUNCTIONS = (Path(__file__).parent / "caps.lua").read_text()
_SCRIPT = _FUNCTIONS + """
if ARGV[1] == 'commit' or ARGV[1] == 'release' then
  return settle(ledger_keys(1), ARGV[1], tonumber(ARGV[2]), ARGV[3])
end
return count_or_reserve(ledger_keys(1), ARGV, 0)
"""
LEDGER = Script(_SCRIPT)
"""The ledger's own script: a check or reservation, or a settlement."""
DECIDE = Script(_FUNCTIONS + (Path(__file__).parent / "decide.lua").read_text())
"""The one script of a decision's round trip (see ``decide.lua``)."""
_CHANNELS = {value: channel_name(value) for value in messaging_pb2.Channel.values()}
R = rule_set_pb2
_STATES = {
    "h": decision_pb2.RESERVATION_STATE_HELD, "c": decision_pb2.RESERVATION_STATE_COMMITTED,
    "r": decision_pb2.RESERVATION_STATE_RELEASED, "x": decision_pb2.RESERVATION_STATE_EXPIRED,
    "p": decision_pb2.RESERVATION_STATE_PREEMPTED,
}


@dataclass(frozen=True)
class CapWindow:
    """One cap that a message counts against, with its current window."""

    cap: rule_set_pb2.FrequencyCap
    """The cap."""
    start: dt.datetime
    """The window's start (UTC)."""
    end: dt.datetime
    """The window's end (UTC)."""


def _window(cap: rule_set_pb2.FrequencyCap, now: dt.datetime, zone: ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
    kind = cap.window.kind
    if kind == R.CAP_WINDOW_KIND_ROLLING:
        return now - cap.window.duration.ToTimedelta(), now
    local = now.astimezone(zone)
    day = local.date()
    if kind == R.CAP_WINDOW_KIND_CALENDAR_WEEK:
        day -= dt.timedelta(days=local.weekday())
        days = 7
    else:
        days = 1
    # Midnights are built from the wall clock in the zone, so a day is 23 or
    # 25 hours long across a DST change, as the recipient lives it.
    start = dt.datetime.combine(day, dt.time(), tzinfo=zone)
    end = dt.datetime.combine(day + dt.timedelta(days=days), dt.time(), tzinfo=zone)
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


def plan_caps(
    spec: rule_set_pb2.RuleSetSpec, *, channel: messaging_pb2.Channel.ValueType, tags: Sequence[str], now: dt.datetime, zone: ZoneInfo,
) -> list[CapWindow]:
    """The caps a message on *channel* with *tags* counts against, with their windows."""
    planned = []
    for cap in spec.frequency_caps:
        if cap.scope == R.CAP_SCOPE_CHANNEL and cap.channel != channel:
            continue
        if cap.scope == R.CAP_SCOPE_TAG and cap.tag not in tags:
            continue
        start, end = _window(cap, now, zone)
        planned.append(CapWindow(cap, start, end))
    return planned


class CapPlanner:
    """:func:`plan_caps` for one rule set version, with each cap's scope read
    once and calendar windows remembered per zone and local day (many
    decisions share a day; a rolling window moves with every one).
    ``tests/unit/rules/test_caps.py`` checks it gives what plan_caps gives."""

    _MEMO_SIZE = 4096

    def __init__(self, spec: rule_set_pb2.RuleSetSpec) -> None:
        self._caps = tuple((cap, cap.scope, cap.channel, cap.tag, cap.window.kind,
                            cap.window.duration.ToTimedelta() if cap.window.kind == R.CAP_WINDOW_KIND_ROLLING else None)
                           for cap in spec.frequency_caps)
        self._windows: dict[tuple[int, str, dt.date], tuple[dt.datetime, dt.datetime]] = {}

    def plan(self, *, channel: messaging_pb2.Channel.ValueType, tags: Sequence[str], now: dt.datetime, zone: ZoneInfo) -> list[CapWindow]:
        """The caps a message counts against, with their windows (as plan_caps)."""
        planned = []
        day: dt.date | None = None
        for i, (cap, scope, cap_channel, tag, _, rolling) in enumerate(self._caps):
            if scope == R.CAP_SCOPE_CHANNEL and cap_channel != channel:
                continue
            if scope == R.CAP_SCOPE_TAG and tag not in tags:
                continue
            if rolling is not None:
                planned.append(CapWindow(cap, now - rolling, now))
                continue
            if day is None:
                day = now.astimezone(zone).date()
            key = (i, zone.key, day)
            window = self._windows.get(key)
            if window is None:
                if len(self._windows) >= self._MEMO_SIZE:
                    self._windows.clear()
                window = self._windows[key] = _window(cap, now, zone)
            planned.append(CapWindow(cap, *window))
        return planned


@dataclass(frozen=True)
class LedgerResult:
    """What the ledger said about one message."""

    allowed: bool
    """Whether every cap had room (after any preemption)."""
    counters: tuple[decision_pb2.CapCounter, ...]
    """Each cap's count before this message."""
    preempted: tuple[str, ...]
    """Decisions whose held reservations this one preempted."""
    replayed: bool
    """True when the decision id had already reserved (an idempotent repeat)."""


def _ms(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


class CapLedger:
    """The per-subject frequency-cap ledger in Redis."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, *, hold: dt.timedelta, retention: dt.timedelta) -> None:
        self._redis = redis
        self._keys = keys
        self._hold_ms = int(hold.total_seconds() * 1000)
        self._retention_ms = int(retention.total_seconds() * 1000)
        self._script = redis.register_script(_SCRIPT)

    @property
    def redis(self) -> aioredis.Redis:
        """The ledger's Redis."""
        return self._redis

    @property
    def keys(self) -> Keys:
        """How the ledger's keys are named."""
        return self._keys

    def _keys_of(self, tenant: str, subject_id: str) -> tuple[str, ...]:
        return SubjectKeys.of(self._keys, tenant, subject_id).ledger

    def args(
        self, op: str, *, decision_id: str, priority: int, channel: messaging_pb2.Channel.ValueType, tags: Sequence[str],
        windows: Sequence[CapWindow], now: dt.datetime,
    ) -> list[Any]:
        """The script arguments of a check or a reservation."""
        args: list[Any] = [op, _ms(now), decision_id, priority, self._hold_ms, self._retention_ms, _CHANNELS[channel],
                           ",".join(tags), len(windows)]
        for w in windows:
            scope = w.cap.scope
            if scope == R.CAP_SCOPE_CHANNEL:
                args += [w.cap.id, "c", _CHANNELS[w.cap.channel], w.cap.limit, _ms(w.start)]
            elif scope == R.CAP_SCOPE_TAG:
                args += [w.cap.id, "t", w.cap.tag, w.cap.limit, _ms(w.start)]
            else:
                args += [w.cap.id, "a", "", w.cap.limit, _ms(w.start)]
        return args

    async def run(self, tenant: str, subject_id: str, args: list[Any], windows: Sequence[CapWindow]) -> LedgerResult:
        """Check or reserve, as *args* say."""
        reply = await self._script(keys=self._keys_of(tenant, subject_id), args=args)
        return self.parse(reply, windows)

    @staticmethod
    def decide_command(keys: SubjectKeys, *, generation: str, generation_ttl_ms: int, args: list[Any] | None) -> tuple[Script, tuple[Any, ...]]:
        """``decide.lua`` for :func:`~.scripts.run_scripts`: confirm that
        *generation* is the subject's current profile generation and, only
        then, run *args* (a check or reservation) on its ledger; *args* None
        counts nothing. The reply is ``decide.lua``'s."""
        return DECIDE, DECIDE.command([keys.generation, keys.view, *keys.ledger],
                                      [generation, fresh_generation(), generation_ttl_ms, *(args if args is not None else ("none",))])

    @staticmethod
    def parse(reply: list[Any], windows: Sequence[CapWindow]) -> LedgerResult:
        """The result of a check or reservation reply."""
        outcome, replayed = _text(reply[0]), bool(int(reply[1]))
        counts = reply[2:2 + len(windows)]
        counters = []
        for w, (cap_id, count, limit) in zip(windows, counts, strict=True):
            counters.append(decision_pb2.CapCounter(cap_id=_text(cap_id), count=int(count), limit=int(limit),
                                                    window_start=_timestamp(w.start), window_end=_timestamp(w.end)))
        preempted = tuple(_text(v) for v in reply[2 + len(windows):])
        return LedgerResult(outcome == "allowed", tuple(counters), preempted, replayed)

    def check_command(self, tenant: str, subject_id: str, args: list[Any]) -> tuple[Script, tuple[Any, ...]]:
        """The command that runs a check (*args* of op ``check``) on a
        subject's ledger, for :class:`~.scripts.ScriptChannel`, without
        confirming any profile view; :meth:`parse` reads its reply."""
        return LEDGER, LEDGER.command(self._keys_of(tenant, subject_id), args)

    def settle_command(
        self, tenant: str, subject_id: str, decision_id: str, *, commit: bool, now: dt.datetime,
    ) -> tuple[Script, tuple[Any, ...]]:
        """The command that commits or releases a reservation, for
        :class:`~.scripts.ScriptChannel`; :meth:`settled` reads its reply."""
        return LEDGER, LEDGER.command(self._keys_of(tenant, subject_id), ["commit" if commit else "release", _ms(now), decision_id])

    @staticmethod
    def settled(reply: list[Any]) -> tuple[decision_pb2.ReservationState.ValueType, str]:
        """A settlement's reply: the reservation's state after the call
        (``UNSPECIFIED`` when the ledger has no such reservation) and, when
        it was preempted, the decision that preempted it."""
        state, by = reply
        return _STATES.get(_text(state), decision_pb2.RESERVATION_STATE_UNSPECIFIED), _text(by)

    async def forget(self, tenant: str, subject_id: str) -> None:
        """Drop a subject's ledger (erasure)."""
        await self._redis.delete(*self._keys_of(tenant, subject_id))


def _timestamp(when: dt.datetime) -> timestamp_pb2.Timestamp:
    """``Timestamp.FromDatetime`` of an aware datetime, without its Python-level calendar conversion."""
    delta = when - EPOCH
    return timestamp_pb2.Timestamp(seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000)




def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
