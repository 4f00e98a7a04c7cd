"""Backtesting: evaluate a candidate rule set version against the stored
decisions of a time window, reserving nothing, and report every decision
that would change. This is shadow mode before go-live.

Each stored decision keeps its (masked) inputs: the profile, the message and
the cap counts it saw. The candidate is evaluated on exactly those, so the
only difference is the rules. Limits: attributes holding personal data were
masked when stored, so rules that compare them exactly cannot be replayed
faithfully; a cap the stored decision did not know counts from zero.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import sqlalchemy as sa

from overture.common.v1 import messaging_pb2
from overture.rules.v1 import decision_pb2, rules_service_pb2
from overture_runtime.db import Database

from .caps import plan_caps
from .compiler import CompiledRuleSet
from .engine import evaluate, recipient_zone
from .replay import decode
from .tables import decisions

__all__ = ["Backtest", "backtest"]

D = decision_pb2
_CHUNK = 1000


@dataclass
class Backtest:
    """The outcome of a backtest."""

    evaluated: int = 0
    changed: int = 0
    newly_denied: int = 0
    newly_allowed: int = 0
    changes: list[rules_service_pb2.BacktestChange] = field(default_factory=list)


def replay_one(candidate: CompiledRuleSet, subject_id: str, replay: dict[str, object]) -> tuple[bool, list[decision_pb2.Verdict]]:
    """Whether *candidate* allows a stored decision's inputs, and its denying verdicts."""
    profile, message, cap_counts = decode(subject_id, replay)  # type: ignore[arg-type]
    outcome = evaluate(candidate, profile, message)
    denying = [v for v in outcome.verdicts if v.outcome in (D.VERDICT_OUTCOME_DENY, D.VERDICT_OUTCOME_ERROR)]
    if outcome.allowed and message.category != messaging_pb2.MESSAGE_CATEGORY_TRANSACTIONAL:
        zone = recipient_zone(candidate.spec, profile)
        for window in plan_caps(candidate.spec, channel=message.channel, tags=message.tags, now=message.now, zone=zone):
            count = cap_counts.get(window.cap.id, 0)
            if count >= window.cap.limit:
                denying.append(D.Verdict(kind=D.VERDICT_KIND_FREQUENCY_CAP, id=window.cap.id, outcome=D.VERDICT_OUTCOME_DENY,
                                         reason=f"frequency cap {window.cap.id} reached: {count} of {window.cap.limit}"))
    return not denying, denying


async def backtest(
    db: Database, candidate: CompiledRuleSet, *, tenant: str, rule_set: str, start: dt.datetime, end: dt.datetime, keep: int,
) -> Backtest:
    """Replay the window's stored deciding decisions (CHECK, RESERVE, RESERVE_AND_COMMIT) of *rule_set* on
    *candidate*; settlements (COMMIT, RELEASE) decide nothing."""
    t = decisions
    result = Backtest()
    after: tuple[dt.datetime, str] | None = None
    while True:
        query = (
            sa.select(t.c.decision_id, t.c.subject_id, t.c.allowed, t.c.evaluate_time, t.c.replay)
            .where((t.c.tenant == tenant) & (t.c.rule_set == rule_set) & (t.c.evaluate_time >= start) & (t.c.evaluate_time < end)
                   & t.c.mode.in_(("check", "reserve", "reserve_and_commit")) & t.c.replay.is_not(None))
            .order_by(t.c.evaluate_time, t.c.decision_id).limit(_CHUNK)
        )
        if after is not None:
            query = query.where(sa.tuple_(t.c.evaluate_time, t.c.decision_id) > sa.tuple_(*after))
        async with db.connect() as conn:
            rows = (await conn.execute(query)).all()
        for row in rows:
            if not isinstance(row.replay, dict):  # erased before SQL NULL was written (JSON null): nothing to replay
                continue
            result.evaluated += 1
            allowed, denying = replay_one(candidate, row.subject_id, row.replay)
            if allowed == row.allowed:
                continue
            result.changed += 1
            if allowed:
                result.newly_allowed += 1
            else:
                result.newly_denied += 1
            if len(result.changes) < keep:
                result.changes.append(rules_service_pb2.BacktestChange(
                    decision_id=row.decision_id, subject_id=row.subject_id, allowed_before=row.allowed, allowed_after=allowed,
                    verdicts_after=denying,
                ))
        if len(rows) < _CHUNK:
            return result
        after = (rows[-1].evaluate_time, rows[-1].decision_id)
