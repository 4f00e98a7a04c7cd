"""Recording a batch of simple outcomes on PostgreSQL in one statement.

Most batches are runs with one token that took a step or a few (a send and
an exit): their outcomes append attempts, move or end the token, drop its
waits, update the run's row and add to the journeys' counters. On
PostgreSQL that is one statement of data-modifying CTEs over arrays
(:data:`_RECORD`), atomic without a transaction's BEGIN and COMMIT, where
:class:`.recording.Recorder` takes a transaction of seven or eight
statements. The statement first locks the tokens the claim still holds (its
lease owner); everything else joins on them, so a worker whose lease ran
out changes nothing, as in the general path.

An outcome is simple (:func:`is_simple`) when it changes nothing else: no
forks, joins or cancelled siblings, no new wait or approval, no context
key, arm, holdout or goal, and its run did not fail (failed runs go to the
dead-letter queue). A batch with any other outcome takes the general path,
as does SQLite (``overture dev``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from overture_runtime.clock import IdGenerator
from overture_runtime.db import Database, utc_datetime

from .model import LIVE, RunState, TokenState
from .recording import attempt_rows, count_outcomes
from .tables import runs, stats, step_attempts, tokens, waits
from .work import Outcome

__all__ = ["is_simple", "record_params", "record_simple", "record_statement"]


def is_simple(outcome: Outcome) -> bool:
    """Whether :func:`record_simple` can record *outcome*."""
    e = outcome.effects
    return (outcome.work.token == 0 and outcome.run_state != RunState.FAILED and outcome.token_state != TokenState.JOINED
            and (e is None or (e.wait is None and e.approval is None and not e.expired_approval and not e.forks and not e.joined
                               and not e.cancel_siblings and not e.context and not e.arms and not e.holdout and not e.goal)))


async def record_simple(db: Database, ids: IdGenerator, *, owner: str, outcomes: Sequence[Outcome], now: dt.datetime) -> int:
    """Record simple *outcomes* (one per run) of the claim *owner*; returns how many it still held."""
    async with db.one_statement() as conn:
        held = (await conn.execute(_RECORD, record_params(ids, owner=owner, outcomes=outcomes, now=now))).scalar()
    return int(held or 0)


def record_params(ids: IdGenerator, *, owner: str, outcomes: Sequence[Outcome], now: dt.datetime) -> dict[str, Any]:
    """The parameters of :func:`record_statement` for *outcomes*: one array per column."""
    attempts = attempt_rows(outcomes, ids)
    counts = [(o.work.tenant, o.work.run_id, key, n) for o in outcomes
              for added in count_outcomes([o], {(o.work.tenant, o.work.run_id): o.run_state}, {}, now).values()
              for key, n in added.items() if n and key[0]]  # per run, so that only the runs still held count
    return {
        "owner": owner, "now": now,
        "o_tenant": [o.work.tenant for o in outcomes], "o_run": [o.work.run_id for o in outcomes],
        "o_token": [o.work.token for o in outcomes], "o_ended": [o.run_state not in LIVE for o in outcomes],
        "o_node": [o.node for o in outcomes], "o_state": [o.token_state.value for o in outcomes],
        "o_due": [o.due_time or now for o in outcomes], "o_attempts": [o.work.attempts for o in outcomes],
        "o_evaluations": [o.work.evaluations for o in outcomes], "o_deadline": [o.work.deadline for o in outcomes],
        "o_since": [o.work.node_since or now for o in outcomes], "o_run_state": [o.run_state.value for o in outcomes],
        "o_step": [o.node if o.run_state in LIVE else "" for o in outcomes],
        "o_actions": [o.effects.actions if o.effects is not None else 0 for o in outcomes],
        **{f"a_{k}": [row[k] for row in attempts] for k in _ATTEMPT_COLUMNS},
        "c_tenant": [c[0] for c in counts], "c_run": [c[1] for c in counts], "c_journey": [c[2][0] for c in counts],
        "c_version": [c[2][1] for c in counts], "c_step": [c[2][2] for c in counts], "c_metric": [c[2][3] for c in counts],
        "c_n": [c[3] for c in counts],
    }


_ATTEMPT_COLUMNS = ("tenant", "run_id", "attempt_id", "step_id", "state", "decision_id", "delivery_id", "outcome", "error",
                    "start_time", "end_time", "wake_time", "edge", "detail")


def record_statement(prefix: str = "") -> sa.TextualSelect:
    """The statement :func:`record_simple` runs, after *prefix* (``EXPLAIN ...`` in the plan tests)."""
    attempt_columns = ", ".join(_ATTEMPT_COLUMNS)
    text = sa.text(prefix + f"""
        WITH o AS MATERIALIZED (
            SELECT * FROM unnest(:o_tenant, :o_run, :o_token, :o_ended, :o_node, :o_state, :o_due, :o_attempts, :o_evaluations,
                                 :o_deadline, :o_since, :o_run_state, :o_step, :o_actions)
                AS o(tenant, run_id, token, ended, node, state, due_time, attempts, evaluations, deadline, node_since, run_state,
                     current_step, actions)
        ), held AS MATERIALIZED (
            SELECT t.tenant, t.run_id, t.token FROM {tokens.name} t JOIN o USING (tenant, run_id, token)
            WHERE t.lease_owner = :owner
            ORDER BY t.tenant, t.run_id, t.token
            FOR UPDATE OF t
        ), kept AS MATERIALIZED (
            SELECT o.* FROM o JOIN held USING (tenant, run_id, token)
        ), appended AS (
            INSERT INTO {step_attempts.name} ({attempt_columns})
            SELECT a.* FROM unnest({", ".join(f":a_{c}" for c in _ATTEMPT_COLUMNS)}) AS a({attempt_columns})
            WHERE EXISTS (SELECT 1 FROM kept k WHERE k.tenant = a.tenant AND k.run_id = a.run_id)
        ), waits_gone AS (
            DELETE FROM {waits.name} w USING kept k WHERE w.tenant = k.tenant AND w.run_id = k.run_id AND w.token = k.token
        ), tokens_ended AS (
            DELETE FROM {tokens.name} t USING kept k
            WHERE k.ended AND t.tenant = k.tenant AND t.run_id = k.run_id AND t.token = k.token
        ), tokens_moved AS (
            UPDATE {tokens.name} t SET node = k.node, state = k.state, due_time = k.due_time, attempts = k.attempts,
                                       evaluations = k.evaluations, lease_owner = NULL, deadline = k.deadline, node_since = k.node_since
            FROM kept k WHERE NOT k.ended AND t.tenant = k.tenant AND t.run_id = k.run_id AND t.token = k.token
        ), runs_moved AS (
            UPDATE {runs.name} r SET state = k.run_state, current_step = k.current_step, update_time = :now, actions = r.actions + k.actions,
                                     -- as the general path, which writes the run's branches back with its actions
                                     arms = CASE WHEN k.actions <> 0 THEN COALESCE(r.arms, '[]'::jsonb) ELSE r.arms END
            FROM kept k WHERE r.tenant = k.tenant AND r.run_id = k.run_id
        ), counted AS (
            INSERT INTO {stats.name} (tenant, journey, version, step_id, metric, count)
            SELECT c.tenant, c.journey, c.version, c.step_id, c.metric, sum(c.n)
            FROM unnest(:c_tenant, :c_run, :c_journey, :c_version, :c_step, :c_metric, :c_n)
                AS c(tenant, run_id, journey, version, step_id, metric, n)
            WHERE EXISTS (SELECT 1 FROM kept k WHERE k.tenant = c.tenant AND k.run_id = c.run_id)
            GROUP BY c.tenant, c.journey, c.version, c.step_id, c.metric
            ORDER BY c.tenant, c.journey, c.version, c.step_id, c.metric
            ON CONFLICT (tenant, journey, version, step_id, metric) DO UPDATE SET count = {stats.name}.count + excluded.count
        )
        SELECT count(*) FROM kept""")
    texts, ints, times = ARRAY(sa.Text), ARRAY(sa.Integer), ARRAY(utc_datetime)
    types: dict[str, Any] = {
        "owner": sa.Text(), "now": utc_datetime(),
        "o_tenant": texts, "o_run": texts, "o_token": ARRAY(sa.SmallInteger), "o_ended": ARRAY(sa.Boolean), "o_node": texts,
        "o_state": texts, "o_due": times, "o_attempts": ints, "o_evaluations": ints, "o_deadline": times, "o_since": times,
        "o_run_state": texts, "o_step": texts, "o_actions": ints,
        **{f"a_{c}": texts for c in _ATTEMPT_COLUMNS},
        "a_start_time": times, "a_end_time": times, "a_wake_time": times, "a_detail": ARRAY(JSONB),
        "c_tenant": texts, "c_run": texts, "c_journey": texts, "c_version": ARRAY(sa.BigInteger), "c_step": texts,
        "c_metric": texts, "c_n": ARRAY(sa.BigInteger),
    }
    return text.bindparams(*(sa.bindparam(name, type_=type_) for name, type_ in types.items())).columns(count=sa.BigInteger)


_RECORD = record_statement()
