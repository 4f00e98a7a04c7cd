"""Runs started while a worker is free are executed at once, already claimed;
runs started while every worker is busy wait, due, for a worker to claim them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from overture.ingest.v1 import ingest_service_pb2 as I
from overture.orchestrator.v1 import orchestrator_service_pb2 as O
from overture.orchestrator.v1 import run_pb2
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


async def test_a_run_started_while_every_worker_is_busy_is_claimed_once_one_is_free(
    make_settings: Callable[..., Settings], tmp_path: Path,
) -> None:
    """With the only worker slot held, a new run waits unclaimed and due; once the slot frees, a worker claims it and sends once."""
    one_worker = lambda **overrides: make_settings(orchestrator_workers=1, **overrides)  # noqa: E731
    async with running_cluster(one_worker, tmp_path / "mail") as c:
        await publish_tour(c)
        pool = c.apps["orchestrator"].workers
        owner = await pool.eager()
        assert owner is not None and await pool.eager() is None  # the one slot is taken
        claimed = _claimed("claimed")
        await c.ingest.IngestEvents(I.IngestEventsRequest(events=[
            _event("identify", "gus", traits={"email": "gus@example.com", "first_name": "Gus"}),
            _event("consent.granted", "gus", channel="email", purpose="marketing"),
            _event("user.signed_up", "gus", "busy-signup"),
        ]), metadata=MD)

        async def started() -> run_pb2.Run | None:
            runs = (await c.orchestrator.ListRuns(O.ListRunsRequest(subject_id="gus"), metadata=MD)).runs
            return runs[0] if runs else None

        run = await eventually(started, what="the run to start")
        assert run.state == run_pb2.RUN_STATE_RUNNING and not c.mail.messages
        pool.dispatch(owner, [])  # the slot is free again
        await eventually(lambda: _async(c.mail.messages), what="the claimed run's email")
        assert _claimed("claimed") >= claimed + 1 and [m["To"] for m in c.mail.messages] == ["gus@example.com"]


async def _async(value: object) -> object:
    return value
