"""Journeys' statistics, kept as counters as runs move (ADR 0015).

Every change that moves runs adds to ``orchestrator_stats`` in its own
transaction, one statement per batch: reading a journey's statistics reads
its counters (a few rows per step), never its runs. Run-level counters are
under step id ``""``; a step's under its id. Step latency is a histogram of
fixed buckets, read back as percentiles (each the upper bound of its bucket).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from google.protobuf import duration_pb2
from sqlalchemy.dialects import postgresql, sqlite

from overture.orchestrator.v1 import journey_pb2, orchestrator_service_pb2
from overture_runtime.db import Database

from .tables import stats

__all__ = ["LATENCY_BUCKETS", "Counts", "add_counts", "day_metric", "latency_metric", "read_stats", "run_counts", "waiting_left"]

Counts = Counter[tuple[str, int, str, str]]
"""Additions by (journey, version, step id, metric)."""
_DAYS = 90
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0, 21600.0, 86400.0, 604800.0, 2592000.0)
"""Upper bounds (seconds) of the step-latency histogram; past the last is ``inf``."""


def day_metric(when: dt.datetime, what: str) -> str:
    """The counter of *what* (entered, sent, converted, failed) on the UTC day of *when*."""
    return f"day:{when.astimezone(dt.UTC).date().isoformat()}:{what}"


def latency_metric(seconds: float) -> str:
    """The histogram counter of a step latency."""
    for bound in LATENCY_BUCKETS:
        if seconds <= bound:
            return f"latency_le:{bound:g}"
    return "latency_le:inf"


async def add_counts(conn: Any, tenant: str, counts: Counts) -> None:
    """Add *counts* in one statement (inside the caller's transaction)."""
    rows = [dict(tenant=tenant, journey=j, version=v, step_id=s, metric=m, count=n) for (j, v, s, m), n in counts.items() if n and j]
    if not rows:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    insert = dialect.insert(stats)
    await conn.execute(insert.on_conflict_do_update(index_elements=["tenant", "journey", "version", "step_id", "metric"],
                                                    set_={"count": stats.c.count + insert.excluded["count"]}), rows)


async def read_stats(db: Database, tenant: str, name: str, version: int, spec: journey_pb2.JourneySpec | None,
                     ) -> orchestrator_service_pb2.JourneyStats:
    """A journey's counters (of one version, or all of them for 0) as the API gives them."""
    query = sa.select(stats.c.step_id, stats.c.metric, sa.func.sum(stats.c.count).label("count")).where(
        (stats.c.tenant == tenant) & (stats.c.journey == name)).group_by(stats.c.step_id, stats.c.metric)
    if version:
        query = query.where(stats.c.version == version)
    async with db.connect() as conn:
        rows = (await conn.execute(query)).all()
    by_step: dict[str, dict[str, int]] = {}
    for row in rows:
        by_step.setdefault(row.step_id, {})[row.metric] = int(row.count)
    run = by_step.pop("", {})
    out = orchestrator_service_pb2.JourneyStats(
        name=name, version=version, entered=run.get("entered", 0), completed=run.get("completed", 0),
        converted=run.get("converted", 0), failed=run.get("failed", 0), cancelled=run.get("cancelled", 0),
        skipped_entries=run.get("skipped", 0) + run.get("erased", 0),
        dead_lettered=max(0, run.get("failed", 0) - run.get("retried", 0)))
    out.active = max(0, out.entered - out.completed - out.failed - out.cancelled - run.get("erased", 0) + run.get("retried", 0)
                     + run.get("migrated_in", 0) - run.get("migrated_out", 0))  # MigrateRuns moves live runs between versions
    order = [s.id for s in spec.steps] if spec is not None else []
    sent = failed = 0
    for step_id in order + sorted(set(by_step) - set(order)):
        counters = by_step.get(step_id)
        if counters is None:
            continue
        step = out.steps.add(step_id=step_id, entered=counters.get("entered", 0), completed=counters.get("completed", 0),
                             skipped=counters.get("skipped", 0), failed=counters.get("failed", 0),
                             waiting=max(0, counters.get("waiting_in", 0) - counters.get("waiting_out", 0)))
        for metric, count in counters.items():
            if metric.startswith("edge:"):
                step.edges[metric.removeprefix("edge:")] = count
        for field, quantile in (("latency_p50", 0.5), ("latency_p95", 0.95), ("latency_p99", 0.99)):
            seconds = _quantile(counters, quantile)
            if seconds is not None:
                getattr(step, field).CopyFrom(duration_pb2.Duration(seconds=int(seconds), nanos=int((seconds % 1) * 1e9)))
        sent += counters.get("sent", 0)
        failed += counters.get("send_failed", 0)
    out.send_success_rate = sent / (sent + failed) if sent + failed else 0.0
    days: dict[str, dict[str, int]] = {}
    for metric, count in run.items():
        if metric.startswith("day:"):
            _, date, what = metric.split(":", 2)
            days.setdefault(date, {})[what] = count
    for date in sorted(days)[-_DAYS:]:
        counters = days[date]
        out.days.add(date=date, entered=counters.get("entered", 0), sent=counters.get("sent", 0),
                     converted=counters.get("converted", 0), failed=counters.get("failed", 0))
    holdouts = _holdouts(spec)
    arms: dict[tuple[str, str], dict[str, int]] = {}
    for metric, count in run.items():
        if metric.startswith("arm:"):
            _, step_id, arm, what = metric.split(":", 3)
            arms.setdefault((step_id, arm), {})[what] = count
    for (step_id, arm), counters in sorted(arms.items()):
        out.arms.add(step_id=step_id, arm=arm, holdout=(step_id, arm) in holdouts, entered=counters.get("entered", 0),
                     converted=counters.get("converted", 0))
    return out


def _quantile(counters: Mapping[str, int], q: float) -> float | None:
    buckets = [(float(m.removeprefix("latency_le:")), n) for m, n in counters.items() if m.startswith("latency_le:")]
    total = sum(n for _, n in buckets)
    if not total:
        return None
    seen = 0
    for bound, count in sorted(buckets):
        seen += count
        if seen >= q * total:
            return bound if bound != float("inf") else LATENCY_BUCKETS[-1]
    return None


def _holdouts(spec: journey_pb2.JourneySpec | None) -> set[tuple[str, str]]:
    if spec is None:
        return set()
    return {(s.id, b.name) for s in spec.steps if s.WhichOneof("kind") == "split" for b in s.split.branches if b.holdout}


def waiting_left(ident: tuple[str, int], removed: Iterable[Any]) -> Counts:
    """The ``waiting_out`` additions for tokens removed while they waited
    (rows with ``node`` and ``state``): a cancelled or converted run no
    longer waits at its steps."""
    return Counter((*ident, row.node, "waiting_out") for row in removed if row.state in ("waiting", "resumed", "joined"))


def run_counts(journey: str, version: int, metrics: Iterable[str]) -> Counts:
    """Run-level additions of *metrics* for one run."""
    return Counter((journey, version, "", m) for m in metrics)


