"""Provider status callbacks: a delivery moves forward to what its provider reports.

A callback reaches the service through ingest's ``POST
/callbacks/{provider}/{tenant}`` and ``ReportProviderCallback``. The
provider's connector authenticates it and reads its updates
(:class:`~.plugin.CallbackConnector`); each update finds its delivery in the
tenant by the provider's message id, or by the reference an in-doubt
delivery was recorded under before the provider's id was known (through
``connectors_deliveries_provider_message_id``), and moves it forward:
a status only replaces one of a lower rank (in doubt < sent < delivered or
failed < opened, clicked, complained), since providers' callbacks arrive
out of order. An in-doubt delivery a callback settles is settled for good:
the provider had it. The change and its report to the orchestrator
(:mod:`.reports`) are written in one transaction, then reported at once.

A callback about a delivery whose send has not been recorded yet (still
SENDING: the provider answered the send and called back before the outcome
was written) is refused for now, so the provider calls again; one about no
known delivery is accepted and changes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
import structlog

from overture_runtime.clock import Clock, IdGenerator
from overture_runtime.db import Database
from overture_runtime.errors import InvalidArgument, NotFound, Unauthenticated, Unavailable

from .plugin import CallbackConnector, CallbackRefused, Connector, StatusUpdate
from .reports import StatusReporter, stage
from .tables import deliveries

__all__ = ["RANK", "CallbackIntake"]

log = structlog.get_logger("overture.connectors.callbacks")
RANK = {"in_doubt": 0, "sent": 1, "delivered": 2, "failed": 2, "bounced": 2, "opened": 3, "clicked": 3, "complained": 3}
"""How far along each status is; a callback only moves a delivery to a higher rank."""


def _rank(row: Any) -> int:
    if row.status == "failed" and row.retryable:
        return 0  # no provider was known to have it; one that reports on it had it after all
    return RANK.get(row.status, 0)


class CallbackIntake:
    """Applies providers' status callbacks. Safe for concurrent use."""

    def __init__(self, *, db: Database, connectors: Mapping[str, Connector], clock: Clock, ids: IdGenerator,
                 reporter: StatusReporter | None = None) -> None:
        self._db = db
        self._connectors = connectors
        self._clock = clock
        self._ids = ids
        self._reporter = reporter

    async def take(self, tenant: str, *, provider: str, headers: Mapping[str, str], body: bytes) -> list[str]:
        """Authenticate and apply one callback; returns the ids of the deliveries it changed."""
        connector = self._connectors.get(provider)
        if not isinstance(connector, CallbackConnector):
            raise NotFound(f"no provider {provider!r} takes status callbacks", reason="UNKNOWN_PROVIDER")
        try:
            updates = connector.read_callback(tenant=tenant, headers=headers, body=body)
        except CallbackRefused as refused:
            if refused.bad_request:
                raise InvalidArgument(str(refused), reason="MALFORMED_CALLBACK") from None
            log.warning("callback.refused", provider=provider, tenant=tenant)
            raise Unauthenticated(str(refused), reason="BAD_SIGNATURE") from None
        changed = [delivery_id for update in updates if (delivery_id := await self._apply(tenant, update))]
        if changed and self._reporter is not None:
            await self._reporter.after_commit(tenant)
        return changed

    async def _apply(self, tenant: str, update: StatusUpdate) -> str:
        t = deliveries
        ids = [i for i in (update.provider_message_id, update.reference) if i]
        now = self._clock.now()
        async with self._db.begin() as conn:
            rows = (await conn.execute(sa.select(t).where((t.c.tenant == tenant) & t.c.provider_message_id.in_(ids))
                                       .limit(2).with_for_update())).all()
            row = next((r for r in rows if r.provider_message_id == update.provider_message_id), rows[0] if rows else None)
            if row is None:
                log.info("callback.no_delivery", tenant=tenant, status=update.status)
                return ""
            if row.status == "sending":
                raise Unavailable("the delivery's send is still being recorded; call back later", reason="DELIVERY_SENDING",
                                  retry_after=dt.timedelta(seconds=5))
            if RANK.get(update.status, 0) <= _rank(row):
                return ""
            await conn.execute(t.update().where((t.c.tenant == tenant) & (t.c.idempotency_key == row.idempotency_key)).values(
                status=update.status, retryable=False, provider_message_id=update.provider_message_id, update_time=now, next_check_time=None,
                last_error=update.detail[:1000] if update.status == "failed" else row.last_error))
            await stage(conn, tenant=tenant, report_id=self._ids.new(), idempotency_key=row.idempotency_key, delivery_id=row.delivery_id,
                        status=update.status, detail=update.detail, occur_time=update.occur_time or now)
        log.info("callback.applied", tenant=tenant, delivery_id=row.delivery_id, status=update.status, was=row.status)
        return str(row.delivery_id)
