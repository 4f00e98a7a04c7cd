"""The sweeper: deliveries nobody is waiting on anymore are settled in the background, never sent again.

Two kinds of rows are swept, each found through its own partial index, a
bounded number per sweep, soonest first, across tenants:

- **Claims left SENDING** (``connectors_deliveries_claimed``): a process
  that claimed a key and stopped before recording the outcome (killed
  mid-send) leaves the row SENDING. Once older than
  ``OVERTURE_CONNECTOR_STALE_CLAIM_SECONDS`` it is taken over (its
  ``update_time`` moved to now, so another replica's sweep skips it) and
  settled through the provider's ``status`` when the connector has a lookup
  (asked by the recorded id, or by the reference the connector derives from
  the key), or marked IN_DOUBT. It is never sent again: the send may have
  reached the provider. A sender that was only slow and records its outcome
  afterwards still wins (its outcome is written over IN_DOUBT).
- **In-doubt deliveries due to be asked again**
  (``connectors_deliveries_recheck``): a delivery that ended IN_DOUBT with a
  connector that has a status lookup carries ``next_check_time``. The
  sweeper leases it (moves the time forward, so replicas do not ask twice),
  asks the provider, and settles it when the provider knows; otherwise it
  asks again after a wait that doubles each time
  (``OVERTURE_CONNECTOR_RECHECK_SECONDS``, up to 6 hours), at most
  ``OVERTURE_CONNECTOR_RECHECK_ATTEMPTS`` times, then leaves it to an
  operator (``overture deliveries resolve``).

A settled status is written with its report to the orchestrator in one
transaction (:mod:`.reports`), guarded on the state the sweeper saw, so an
operator's resolution or a late outcome made meanwhile stands.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import structlog
from prometheus_client import Counter

from overture_runtime.clock import Clock, IdGenerator
from overture_runtime.config import Settings
from overture_runtime.db import Database

from .dispatch import Dispatcher
from .plugin import Connector, has_status_lookup, reference_of
from .reports import StatusReporter, stage
from .tables import deliveries

__all__ = ["BATCH", "MAX_WAIT", "Sweeper", "Swept", "next_wait"]

log = structlog.get_logger("overture.connectors.sweeper")
SWEPT = Counter("overture_connector_swept_total", "Deliveries the sweeper handled, by what it found and what became of them.",
                ["found", "outcome"])
BATCH = 100
"""The most rows of each kind one sweep takes."""
MAX_WAIT = dt.timedelta(hours=6)
"""The longest wait between two questions about one in-doubt delivery."""
_LEASE = dt.timedelta(minutes=5)
_STOPPED = "the sending process stopped mid-send; the provider cannot confirm"


@dataclass
class Swept:
    """What one sweep did."""

    stale_claims: int = 0
    """Claims left SENDING that were taken over."""
    rechecked: int = 0
    """In-doubt deliveries whose provider was asked again."""
    outcomes: dict[str, int] = field(default_factory=dict)
    """How many ended in each state: a status name, ``in_doubt``, ``unknown`` (asked again later) or ``gave_up``."""


def next_wait(first: dt.timedelta, checks: int) -> dt.timedelta:
    """The wait before the next question, after *checks* questions: *first*, doubling each time, at most :data:`MAX_WAIT`."""
    return min(first * int(2 ** min(checks, 30)), MAX_WAIT)


class Sweeper:
    """Sweeps the deliveries of every tenant; see the module docstring. One per process."""

    def __init__(self, *, db: Database, connectors: Mapping[str, Connector], dispatcher: Dispatcher, clock: Clock, ids: IdGenerator,
                 settings: Settings, reporter: StatusReporter | None = None) -> None:
        self._db = db
        self._connectors = connectors
        self._dispatcher = dispatcher
        self._clock = clock
        self._ids = ids
        self._reporter = reporter
        self._stale = dt.timedelta(seconds=settings.connector_stale_claim_seconds)
        self._first = dt.timedelta(seconds=settings.connector_recheck_seconds)
        self._attempts = settings.connector_recheck_attempts
        self._interval = settings.connector_sweep_seconds

    async def run(self, stopping: asyncio.Event) -> None:
        """Sweep every ``OVERTURE_CONNECTOR_SWEEP_SECONDS`` until *stopping* is set."""
        while not stopping.is_set():
            await self.sweep()
            try:
                await asyncio.wait_for(stopping.wait(), timeout=self._interval)
            except TimeoutError:
                pass

    async def sweep(self) -> Swept:
        """One sweep: take over stale claims, then ask again about the in-doubt deliveries that are due."""
        swept = Swept()
        reported: set[str] = set()
        for row in await self._take(stale=True):
            swept.stale_claims += 1
            await self._settle(row, swept, reported, found="stale_claim")
        for row in await self._take(stale=False):
            swept.rechecked += 1
            await self._settle(row, swept, reported, found="in_doubt")
        if swept.stale_claims or swept.rechecked:
            log.info("sweeper.swept", stale_claims=swept.stale_claims, rechecked=swept.rechecked, outcomes=swept.outcomes)
        if self._reporter is not None:
            for tenant in reported:
                await self._reporter.after_commit(tenant)
        return swept

    async def _take(self, *, stale: bool) -> list[Any]:
        """Lease a batch of stale claims (or of due rechecks) in one statement, so another replica's sweep passes them by."""
        t = deliveries
        now = self._clock.now()
        due: sa.ColumnElement[bool]
        if stale:
            due = (t.c.status == "sending") & (t.c.update_time < now - self._stale)
            order, lease = t.c.update_time, {"update_time": now}
        else:
            # No status here: only in-doubt deliveries have a next check, and a status would let the planner walk the open
            # deliveries' index instead of this one's order.
            due = t.c.next_check_time <= now
            order, lease = t.c.next_check_time, {"next_check_time": now + _LEASE}
        batch = sa.select(t.c.tenant, t.c.idempotency_key).where(due).order_by(order).limit(BATCH).with_for_update(skip_locked=True)
        statement = t.update().where(sa.tuple_(t.c.tenant, t.c.idempotency_key).in_(batch.scalar_subquery()) & due).values(**lease)
        async with self._db.begin() as conn:
            return list((await conn.execute(statement.returning(*t.c))).all())

    async def _settle(self, row: Any, swept: Swept, reported: set[str], *, found: str) -> None:
        if found == "in_doubt" and row.status != "in_doubt":  # settled without clearing its check: clear it
            async with self._db.begin() as conn:
                await conn.execute(deliveries.update().where((deliveries.c.tenant == row.tenant)
                                                            & (deliveries.c.idempotency_key == row.idempotency_key)).values(next_check_time=None))
            swept.outcomes["settled_elsewhere"] = swept.outcomes.get("settled_elsewhere", 0) + 1
            return
        connector = self._connectors.get(row.connector)
        lookup = has_status_lookup(connector)
        reference = reference_of(connector, row.tenant, row.idempotency_key, row.provider_message_id)
        status = await self._dispatcher.ask(connector, reference) if lookup and reference else None
        now = self._clock.now()
        t = deliveries
        # Still open (an operator, a callback or the slow sender itself may have settled it meanwhile: theirs stands). By
        # the primary key and the delivery id, and no narrower status: an exact probe whichever index the planner picks
        # (the open deliveries' partial index holds (tenant, delivery_id); the sweeper's own ones would be walked).
        where = ((t.c.tenant == row.tenant) & (t.c.idempotency_key == row.idempotency_key) & (t.c.delivery_id == row.delivery_id)
                 & t.c.status.in_(("sending", "in_doubt")))
        if status is not None:
            values: dict[str, Any] = dict(status=status, retryable=False, last_error="", next_check_time=None, update_time=now,
                                          provider_message_id=reference)
            outcome = status
        elif found == "stale_claim":
            values = dict(status="in_doubt", last_error=_STOPPED, update_time=now,
                          next_check_time=now + self._first if lookup and self._attempts else None)
            outcome = "in_doubt"
        else:
            checks = row.checks + 1
            again = checks < self._attempts
            values = dict(checks=checks, next_check_time=now + next_wait(self._first, checks) if again else None)
            outcome = "unknown" if again else "gave_up"
        async with self._db.begin() as conn:
            written = (await conn.execute(t.update().where(where).values(**values))).rowcount
            if written and status is not None:
                await stage(conn, tenant=row.tenant, report_id=self._ids.new(), idempotency_key=row.idempotency_key,
                            delivery_id=row.delivery_id, status=status, detail=f"settled by the provider's status lookup ({found})",
                            occur_time=now)
                reported.add(row.tenant)
        if not written:  # settled meanwhile: an operator, a callback, or the slow sender itself
            outcome = "settled_elsewhere"
        swept.outcomes[outcome] = swept.outcomes.get(outcome, 0) + 1
        SWEPT.labels(found=found, outcome=outcome).inc()
        if outcome == "gave_up":
            log.warning("sweeper.left_to_an_operator", tenant=row.tenant, delivery_id=row.delivery_id, checks=row.checks + 1)
