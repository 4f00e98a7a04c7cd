"""Inserting new runs: the runs, their inputs, their first tokens and the
journeys' ``entered`` counters, together.

On PostgreSQL this is one statement (:data:`_START`, data-modifying CTEs over
``unnest`` arrays): atomic on its own, so it runs without a transaction's
BEGIN and COMMIT, in one round trip where a transaction of single inserts
took seven. Elsewhere (SQLite, ``overture dev``) a transaction of a few
statements. Used by :meth:`.runs.RunStore.start`.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY

from overture_runtime.db import Database, insert_ignore, utc_datetime

from .model import RunState, TokenState
from .stats import Counts, add_counts, day_metric
from .tables import run_inputs, runs, stats, tokens
from .work import NewRun

__all__ = ["insert_runs"]


async def insert_runs(db: Database, batch: Sequence[NewRun], ids: Sequence[str], *, now: dt.datetime, due: dt.datetime,
                      lease_owner: str | None, skipped: tuple[str, Counts] | None) -> set[str]:
    """Insert the runs of *batch* (with their *ids*) whose trigger has not made
    a run yet (the once-key), their inputs, and first tokens due at *due* and
    leased to *lease_owner*; add the new runs' ``entered`` counters and
    *skipped* (a tenant's skipped entries). Returns the ids inserted."""
    if db.is_sqlite:
        return await _insert_portable(db, batch, ids, now=now, due=due, lease_owner=lease_owner, skipped=skipped)
    counts = [(skipped[0], *key, n) for key, n in skipped[1].items() if n and key[0]] if skipped else []
    async with db.one_statement() as conn:
        return set((await conn.execute(_START, {
            "tenant": [r.tenant for r in batch], "run_id": list(ids), "journey": [r.journey for r in batch],
            "version": [r.version for r in batch], "subject_id": [r.subject_id for r in batch],
            "trigger_event_id": [r.event.event_id for r in batch], "first_step": [r.first_step for r in batch],
            "trigger_event": [r.event.SerializeToString() for r in batch], "inline_spec": [r.inline_spec for r in batch],
            "state": RunState.RUNNING.value, "token_state": TokenState.READY.value, "now": now, "due": due, "lease_owner": lease_owner,
            "day_entered": day_metric(now, "entered"),
            "count_tenant": [c[0] for c in counts], "count_journey": [c[1] for c in counts], "count_version": [c[2] for c in counts],
            "count_step": [c[3] for c in counts], "count_metric": [c[4] for c in counts], "count_n": [c[5] for c in counts],
        })).scalars())


async def _insert_portable(db: Database, batch: Sequence[NewRun], ids: Sequence[str], *, now: dt.datetime, due: dt.datetime,
                           lease_owner: str | None, skipped: tuple[str, Counts] | None) -> set[str]:
    """:func:`insert_runs` in a transaction of a few statements (SQLite)."""
    async with db.begin() as conn:
        inserted = set((await conn.execute(
            insert_ignore(conn, runs, index_elements=["tenant", "journey", "subject_id", "trigger_event_id"]).returning(runs.c.run_id), [
                dict(tenant=r.tenant, run_id=i, journey=r.journey, journey_version=r.version, subject_id=r.subject_id,
                     trigger_event_id=r.event.event_id, state=RunState.RUNNING.value, current_step=r.first_step, create_time=now,
                     update_time=now) for r, i in zip(batch, ids, strict=True)])).scalars())
        fresh = [(r, i) for r, i in zip(batch, ids, strict=True) if i in inserted]
        if fresh:
            await conn.execute(run_inputs.insert(), [
                dict(tenant=r.tenant, run_id=i, trigger_event=r.event.SerializeToString(), inline_spec=r.inline_spec) for r, i in fresh])
            await conn.execute(tokens.insert(), [
                dict(tenant=r.tenant, run_id=i, token=0, node=r.first_step, state=TokenState.READY.value, due_time=due, attempts=0,
                     evaluations=0, lease_owner=lease_owner, node_since=now) for r, i in fresh])
        entered: dict[str, Counts] = {}
        today = day_metric(now, "entered")
        for r, _ in fresh:
            added = entered.setdefault(r.tenant, Counter())
            added[(r.journey, r.version, "", "entered")] += 1
            added[(r.journey, r.version, "", today)] += 1
        if skipped:
            entered.setdefault(skipped[0], Counter()).update(skipped[1])
        for tenant, added in entered.items():
            await add_counts(conn, tenant, added)
    return inserted


def _start_statement() -> sa.TextualSelect:
    """Starting a batch of runs on PostgreSQL, in one statement: the runs
    (skipping those whose trigger already made one, by the once-key), then
    for the new ones their inputs, first tokens and ``entered`` counters,
    plus the skipped entries' counters. A statement is atomic, so it needs
    no transaction around it."""
    text = sa.text(f"""
        WITH batch AS MATERIALIZED (
            SELECT * FROM unnest(:tenant, :run_id, :journey, :version, :subject_id, :trigger_event_id, :first_step, :trigger_event,
                                 :inline_spec)
                AS b(tenant, run_id, journey, journey_version, subject_id, trigger_event_id, first_step, trigger_event, inline_spec)
        ), fresh AS (
            INSERT INTO {runs.name} (tenant, run_id, journey, journey_version, subject_id, trigger_event_id, state, current_step,
                                     create_time, update_time)
            SELECT tenant, run_id, journey, journey_version, subject_id, trigger_event_id, :state, first_step, :now, :now FROM batch
            ON CONFLICT (tenant, journey, subject_id, trigger_event_id) DO NOTHING
            RETURNING run_id
        ), started AS (
            SELECT b.* FROM batch b JOIN fresh f USING (run_id)
        ), inputs AS (
            INSERT INTO {run_inputs.name} (tenant, run_id, trigger_event, inline_spec)
            SELECT tenant, run_id, trigger_event, inline_spec FROM started
        ), first_tokens AS (
            INSERT INTO {tokens.name} (tenant, run_id, token, node, state, due_time, attempts, evaluations, lease_owner, node_since)
            SELECT tenant, run_id, 0, first_step, :token_state, :due, 0, 0, :lease_owner, :now FROM started
        ), counted AS (
            INSERT INTO {stats.name} (tenant, journey, version, step_id, metric, count)
            SELECT tenant, journey, version, step_id, metric, sum(n) FROM (
                SELECT s.tenant, s.journey, s.journey_version AS version, '' AS step_id, m.metric, 1 AS n
                FROM started s CROSS JOIN (VALUES ('entered'), (CAST(:day_entered AS text))) AS m(metric)
                WHERE s.journey <> ''
                UNION ALL
                SELECT * FROM unnest(:count_tenant, :count_journey, :count_version, :count_step, :count_metric, :count_n)
            ) AS c(tenant, journey, version, step_id, metric, n)
            GROUP BY tenant, journey, version, step_id, metric
            ORDER BY tenant, journey, version, step_id, metric
            ON CONFLICT (tenant, journey, version, step_id, metric) DO UPDATE SET count = {stats.name}.count + excluded.count
        )
        SELECT run_id FROM fresh""")
    texts, big = ARRAY(sa.Text), ARRAY(sa.BigInteger)
    return text.bindparams(
        sa.bindparam("tenant", type_=texts), sa.bindparam("run_id", type_=texts), sa.bindparam("journey", type_=texts),
        sa.bindparam("version", type_=big), sa.bindparam("subject_id", type_=texts), sa.bindparam("trigger_event_id", type_=texts),
        sa.bindparam("first_step", type_=texts), sa.bindparam("trigger_event", type_=ARRAY(sa.LargeBinary)),
        sa.bindparam("inline_spec", type_=texts), sa.bindparam("now", type_=utc_datetime), sa.bindparam("due", type_=utc_datetime),
        sa.bindparam("lease_owner", type_=sa.Text), sa.bindparam("state", type_=sa.Text), sa.bindparam("token_state", type_=sa.Text),
        sa.bindparam("day_entered", type_=sa.Text),
        sa.bindparam("count_tenant", type_=texts), sa.bindparam("count_journey", type_=texts), sa.bindparam("count_version", type_=big),
        sa.bindparam("count_step", type_=texts), sa.bindparam("count_metric", type_=texts), sa.bindparam("count_n", type_=big),
    ).columns(run_id=sa.Text)


_START = _start_statement()
