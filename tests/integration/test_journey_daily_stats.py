"""A journey's counters per day: runs entered, messages sent, conversions and
failures of each UTC day, kept as runs move."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

from overture.ingest.v1 import ingest_service_pb2 as I
from overture.orchestrator.v1 import orchestrator_service_pb2 as O
from overture.orchestrator.v1 import run_pb2
from overture_runtime.config import Settings
from tests.conftest import admin_metadata
from tests.thinpath import eventually

from .cluster import running_cluster
from .test_thin_path import _event, publish_tour

MD = admin_metadata()


async def test_the_days_counters_hold_the_runs_entered_and_the_messages_sent(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """Two runs entered today, one of them sent (the other denied for consent), show as today's entered 2 and sent 1."""
    async with running_cluster(make_settings, tmp_path / "mail") as c:
        await publish_tour(c)
        await c.ingest.IngestEvents(I.IngestEventsRequest(events=[
            _event("identify", "nia", traits={"email": "nia@example.com"}),
            _event("consent.granted", "nia", channel="email", purpose="marketing"),
            _event("identify", "oz", traits={"email": "oz@example.com"}),
            _event("user.signed_up", "nia", "daily-nia"),
            _event("user.signed_up", "oz", "daily-oz"),
        ]), metadata=MD)

        async def ended() -> bool | None:
            runs = (await c.orchestrator.ListRuns(O.ListRunsRequest(journey="welcome"), metadata=MD)).runs
            return (len(runs) == 2 and all(r.state == run_pb2.RUN_STATE_COMPLETED for r in runs)) or None

        await eventually(ended, what="both runs to end")
        stats = (await c.orchestrator.GetJourneyStats(O.GetJourneyStatsRequest(name="welcome"), metadata=MD)).stats
        (today,) = stats.days
        assert today.date == dt.datetime.now(dt.UTC).date().isoformat()
        assert (today.entered, today.sent, today.converted, today.failed) == (2, 1, 0, 0)
