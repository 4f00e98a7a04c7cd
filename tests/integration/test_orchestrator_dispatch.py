"""Runs started in a replica are executed by its workers without a claim;
when its queue of started runs is full, they are left due for a claim."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from overture.ingest.v1 import ingest_service_pb2 as I
from overture_orchestrator.worker import CLAIMED
from overture_runtime.config import Settings
from tests.conftest import admin_metadata
from tests.thinpath import eventually

from .cluster import running_cluster
from .test_thin_path import _event, publish_tour

MD = admin_metadata()


def _claimed(how: str) -> float:
    return float(CLAIMED.labels(how)._value.get())


async def test_a_run_started_with_a_free_worker_is_executed_without_a_claim(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """With a worker free, the run an event starts is sent by that worker directly: no claim of due tokens is needed."""
    async with running_cluster(make_settings, tmp_path / "mail") as c:
        await publish_tour(c)
        eager, claimed = _claimed("eager"), _claimed("claimed")
        await c.ingest.IngestEvents(I.IngestEventsRequest(events=[
            _event("identify", "fay", traits={"email": "fay@example.com", "first_name": "Fay"}),
            _event("consent.granted", "fay", channel="email", purpose="marketing"),
            _event("user.signed_up", "fay", "eager-signup"),
        ]), metadata=MD)
        await eventually(lambda: _async(c.mail.messages), what="the welcome email")
        assert _claimed("eager") == eager + 1 and _claimed("claimed") == claimed


async def test_a_run_started_while_the_queue_is_full_is_left_due_and_claimed(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """With this replica's queue of started runs full, a new run is inserted due, unclaimed, and a worker claims it and sends once."""
    async with running_cluster(make_settings, tmp_path / "mail") as c:
        await publish_tour(c)
        pool = c.apps["orchestrator"].workers
        held = [pool.eager(100) for _ in range(4)]
        assert None not in held and pool.eager(1) is None  # four names of a full batch each: the queue is full
        claimed = _claimed("claimed")
        await c.ingest.IngestEvents(I.IngestEventsRequest(events=[
            _event("identify", "gus", traits={"email": "gus@example.com", "first_name": "Gus"}),
            _event("consent.granted", "gus", channel="email", purpose="marketing"),
            _event("user.signed_up", "gus", "busy-signup"),
        ]), metadata=MD)
        await eventually(lambda: _async(c.mail.messages), what="the claimed run's email")
        assert _claimed("claimed") == claimed + 1 and [m["To"] for m in c.mail.messages] == ["gus@example.com"]
        for name in held:
            pool.dispatch(name, [])
        assert pool.eager(1) is not None  # the emptied names are forgotten


async def _async(value: object) -> object:
    return value
