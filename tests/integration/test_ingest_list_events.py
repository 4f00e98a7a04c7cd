"""ListEvents: a tenant's accepted events of a commit-time window, oldest
first (log order within a batch), a page at a time, filtered by type or
subject; on real PostgreSQL (and SQLite, for ``overture dev``), with commit
times from the injected clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2

from overture.common.v1 import event_pb2
from overture.ingest.v1 import ingest_service_pb2 as IS
from overture.ingest.v1 import ingest_service_pb2_grpc
from overture_ingest import IngestApp
from overture_runtime.clock import ManualClock
from overture_runtime.config import Settings
from overture_runtime.testing import serving
from tests.conftest import OTHER_TENANT_TOKEN, admin_metadata
from tests.thinpath import eventually

from .rules_support import field_violations

MD = admin_metadata()
T0 = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=1)


@dataclass
class Ingest:
    stub: ingest_service_pb2_grpc.IngestServiceStub
    clock: ManualClock
    app: IngestApp


@pytest.fixture(params=["postgresql", "sqlite"])
async def ingest(request: pytest.FixtureRequest, make_settings: Callable[..., Settings], tmp_path: Path) -> AsyncIterator[Ingest]:
    database = {"database_url": f"sqlite+aiosqlite:///{tmp_path}/ingest.db"} if request.param == "sqlite" else {}
    settings = make_settings(rules_address="127.0.0.1:1", orchestrator_address="127.0.0.1:1", **database)
    clock = ManualClock(T0)
    app = IngestApp(settings, clock=clock)
    async with serving(app, settings) as address, grpc.aio.insecure_channel(address) as channel:
        yield Ingest(ingest_service_pb2_grpc.IngestServiceStub(channel), clock, app)


def _ts(when: dt.datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


async def _send(ingest: Ingest, *events: tuple[str, str, str], at: dt.timedelta, md: tuple[tuple[str, str], ...] = MD) -> None:
    """Ingest (event id, type, subject) events in one batch, committed at T0 + *at*."""
    ingest.clock.set(T0 + at)
    batch = [event_pb2.Event(event_id=i, event_type=t, subject_id=s) for i, t, s in events]
    results = (await ingest.stub.IngestEvents(IS.IngestEventsRequest(events=batch), metadata=md)).results
    assert all(r.status == IS.EVENT_RESULT_STATUS_ACCEPTED for r in results)


async def _ids(ingest: Ingest, page_size: int = 2, **fields: object) -> list[str]:
    """Every event id the listing gives, page after page."""
    ids: list[str] = []
    token = ""
    while True:
        page = await ingest.stub.ListEvents(IS.ListEventsRequest(page_size=page_size, page_token=token, **fields), metadata=MD)  # type: ignore[arg-type]
        assert len(page.events) <= page_size
        ids += [e.event.event_id for e in page.events]
        token = page.next_page_token
        if not token:
            return ids


async def test_a_window_is_listed_oldest_first_in_pages_with_its_filters(ingest: Ingest) -> None:
    """Pages cover the window once each in commit order (log order within a batch); types, subject and bounds filter it."""
    await _send(ingest, ("e1", "order.completed", "ann"), ("e2", "user.signed_up", "bob"), ("e3", "order.completed", "bob"),
                at=dt.timedelta(hours=1))
    await _send(ingest, ("e4", "page.viewed", "ann"), ("e5", "order.completed", "ann"), at=dt.timedelta(hours=2))
    await _send(ingest, ("e6", "user.signed_up", "cat"), at=dt.timedelta(hours=3))
    await _send(ingest, ("x1", "order.completed", "ann"), at=dt.timedelta(hours=2), md=admin_metadata(OTHER_TENANT_TOKEN))
    ingest.clock.set(T0 + dt.timedelta(hours=5))
    window = dict(start_time=_ts(T0), end_time=_ts(T0 + dt.timedelta(hours=4)))
    assert await _ids(ingest, **window) == ["e1", "e2", "e3", "e4", "e5", "e6"]
    assert await _ids(ingest, page_size=1, **window) == ["e1", "e2", "e3", "e4", "e5", "e6"]
    assert await _ids(ingest, event_types=["order.completed"], **window) == ["e1", "e3", "e5"]
    assert await _ids(ingest, event_types=["order.completed", "user.signed_up"], subject_id="bob", **window) == ["e2", "e3"]
    assert await _ids(ingest, start_time=_ts(T0 + dt.timedelta(hours=2)), end_time=_ts(T0 + dt.timedelta(hours=3))) == ["e4", "e5"]
    assert await _ids(ingest, start_time=_ts(T0 + dt.timedelta(hours=3))) == ["e6"]  # the end defaults to now
    page = await ingest.stub.ListEvents(IS.ListEventsRequest(start_time=_ts(T0), subject_id="cat"), metadata=MD)
    (only,) = page.events
    assert only.commit_time.ToDatetime(tzinfo=dt.UTC) == T0 + dt.timedelta(hours=3) and only.event.event_type == "user.signed_up"


async def test_a_bad_listing_is_refused_at_its_fields(ingest: Ingest) -> None:
    """No start, an end before the start, too many or empty types, a bad page size or token are each named."""
    cases = [
        (IS.ListEventsRequest(), {"start_time"}),
        (IS.ListEventsRequest(start_time=_ts(T0), end_time=_ts(T0)), {"end_time"}),
        (IS.ListEventsRequest(start_time=_ts(T0), event_types=[f"t{i}" for i in range(21)]), {"event_types"}),
        (IS.ListEventsRequest(start_time=_ts(T0), event_types=["ok", " "]), {"event_types[1]"}),
        (IS.ListEventsRequest(start_time=_ts(T0), page_size=1001), {"page_size"}),
        (IS.ListEventsRequest(start_time=_ts(T0), page_token="bm90IGEgdG9rZW4"), {"page_token"}),
    ]
    for request, fields in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ingest.stub.ListEvents(request, metadata=MD)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(field_violations(caught.value)) == fields, request


async def test_events_past_the_retention_period_are_gone_from_every_tenant(ingest: Ingest) -> None:
    """The retention purge, tenant by tenant, deletes published events older than the period, which ListEvents then lacks."""
    await _send(ingest, ("old", "page.viewed", "ann"), at=dt.timedelta(hours=1))
    await _send(ingest, ("old-x", "page.viewed", "ann"), at=dt.timedelta(hours=1), md=admin_metadata(OTHER_TENANT_TOKEN))
    await _send(ingest, ("new", "page.viewed", "ann"), at=dt.timedelta(days=20))

    async def published() -> bool | None:
        stored = [await ingest.app.log.get(tenant, event_id) for tenant, event_id in (("acme", "old"), ("globex", "old-x"), ("acme", "new"))]
        return all(s is not None and s.published for s in stored) or None

    await eventually(published, what="the events published")
    ingest.clock.set(T0 + dt.timedelta(days=21))
    assert await ingest.app.log.purge(older_than=dt.timedelta(days=10)) == 2
    assert await _ids(ingest, start_time=_ts(T0)) == ["new"]
