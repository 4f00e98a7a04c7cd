"""Ingest's doors with the producers' own SDKs, against real PostgreSQL and
Redis: Segment's analytics-python, the CloudEvents SDK, mixed batches,
concurrent duplicates, and a flood over quota."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import segment.analytics as analytics
from cloudevents.v1.conversion import to_binary, to_structured
from cloudevents.v1.http import CloudEvent

from overture.common.v1 import event_pb2
from overture.ingest.v1 import ingest_service_pb2 as I
from overture.ingest.v1 import ingested_event_pb2
from overture.rules.v1 import profile_service_pb2 as P
from overture_runtime.config import Settings
from tests.conftest import ADMIN_TOKEN, REDIS_URL, admin_metadata
from tests.thinpath import eventually

from .cluster import Cluster, running_cluster

MD = admin_metadata()


@pytest.fixture
async def cluster(make_settings: Callable[..., Settings], tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(make_settings, tmp_path / "mail") as running:
        yield running


def _segment_client(host: str) -> analytics.Client:
    return analytics.Client(write_key=ADMIN_TOKEN, host=host, gzip=True, max_queue_size=10_000, upload_size=100, sync_mode=False)


async def test_the_segment_client_works_unchanged(cluster: Cluster) -> None:
    """1,000 track and identify calls through segment-analytics-python are all readable through GetEvent, and identify updates profiles."""
    client = _segment_client(cluster.http)
    sent: list[str] = []

    def produce() -> None:
        for i in range(500):
            ok, message = client.identify(f"user-{i}", {"email": f"user-{i}@example.com", "plan": "pro" if i % 2 else "free"})
            assert ok
            sent.append(message["messageId"])
            ok, message = client.track(f"user-{i}", "Order Completed", {"revenue": i, "currency": "EUR"})
            assert ok
            sent.append(message["messageId"])
        client.flush()
        client.join()

    await asyncio.to_thread(produce)
    assert len(set(sent)) == 1000
    for message_id in sent:
        event = (await cluster.ingest.GetEvent(I.GetEventRequest(event_id=message_id), metadata=MD)).event
        assert event.event.source == "segment"
        assert event.event.event_type in ("identify", "order_completed")
    one = (await cluster.ingest.GetEvent(I.GetEventRequest(event_id=sent[1]), metadata=MD)).event
    assert one.original_event_type == "Order Completed" and one.event.attributes["currency"] == "EUR"

    async def profile_applied() -> object:
        profile = (await cluster.profiles.GetProfile(P.GetProfileRequest(subject_id="user-499"), metadata=MD)).profile
        return profile if profile.traits["plan"] == "pro" else None

    await eventually(profile_applied, what="the identify traits on the profile")
    profile = (await cluster.profiles.GetProfile(P.GetProfileRequest(subject_id="user-0"), metadata=MD)).profile
    assert profile.traits["email"] == "user-0@example.com"


async def test_segment_single_calls_and_bad_messages(cluster: Cluster) -> None:
    """/v1/track and friends take single messages; a message without userId is a 400 with a field violation."""
    auth = httpx.BasicAuth(ADMIN_TOKEN, "")
    async with httpx.AsyncClient(base_url=cluster.http, auth=auth) as http:
        ok = await http.post("/v1/page", json={"userId": "u1", "name": "Pricing", "messageId": "page-1", "properties": {"path": "/pricing"}})
        assert ok.status_code == 200 and ok.json()["success"] is True
        bad = await http.post("/v1/track", json={"event": "Clicked", "messageId": "t-1"})
        assert bad.status_code == 400 and bad.json()["error"]["field_violations"][0]["field"] == "userId"
        unauthenticated = await http.post("/v1/track", json={"userId": "u1", "event": "x"}, auth=httpx.BasicAuth("wrong-key", ""))
        assert unauthenticated.status_code == 401
    event = (await cluster.ingest.GetEvent(I.GetEventRequest(event_id="page-1"), metadata=MD)).event
    assert event.event.event_type == "page.viewed" and event.event.attributes["name"] == "Pricing"


async def test_the_cloudevents_sdk_works_unchanged(cluster: Cluster) -> None:
    """The CloudEvents SDK's structured, binary and batch modes are all accepted and readable."""
    def make(i: int) -> CloudEvent:
        return CloudEvent({"type": "invoice.paid", "source": "/billing", "id": f"inv-{i}", "subject": f"cust-{i}",
                           "time": "2026-11-20T10:00:00Z"}, {"amount": 10 * i})

    async with httpx.AsyncClient(base_url=cluster.http, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
        headers, body = to_structured(make(1))
        structured = await http.post("/cloudevents", headers=headers, content=body)
        headers, body = to_binary(make(2))
        binary = await http.post("/cloudevents", headers=headers, content=body)
        batch_body = "[" + ",".join(to_structured(make(i))[1].decode() for i in range(3, 8)) + "]"
        batch = await http.post("/cloudevents", headers={"content-type": "application/cloudevents-batch+json"}, content=batch_body)
        missing_subject = await http.post("/cloudevents", headers={"content-type": "application/cloudevents+json"},
                                          content=json.dumps({"specversion": "1.0", "type": "a.b", "source": "/x", "id": "1"}))
    assert structured.status_code == 202 and structured.json() == {"event_id": "/billing#inv-1", "status": "accepted"}
    assert binary.status_code == 202, binary.text
    assert batch.status_code == 202 and [r["status"] for r in batch.json()["results"]] == ["accepted"] * 5
    assert missing_subject.status_code == 400 and missing_subject.json()["error"]["field_violations"][0]["field"] == "subject"
    for i in range(1, 8):
        stored = (await cluster.ingest.GetEvent(I.GetEventRequest(event_id=f"/billing#inv-{i}"), metadata=MD)).event
        assert stored.event.event_type == "invoice.paid" and stored.event.subject_id == f"cust-{i}"
        assert stored.event.attributes["amount"] == 10 * i


async def test_three_bad_events_among_ninety_seven_good(cluster: Cluster) -> None:
    """A batch of 100 with 3 bad events: 97 accepted, 3 rejected with the right field paths."""
    events = [event_pb2.Event(event_id=f"good-{i}", event_type="item.viewed", subject_id=f"s{i}") for i in range(100)]
    events[10] = event_pb2.Event(event_id="bad-type", event_type="Item Viewed", subject_id="s10")
    events[50] = event_pb2.Event(event_id="bad-subject", event_type="item.viewed")
    events[90] = event_pb2.Event(event_id="bad-time", event_type="item.viewed", subject_id="s90")
    events[90].occurred_at.FromJsonString("2099-01-01T00:00:00Z")
    results = (await cluster.ingest.IngestEvents(I.IngestEventsRequest(events=events), metadata=MD)).results
    assert sum(r.status == I.EVENT_RESULT_STATUS_ACCEPTED for r in results) == 97
    rejected = {r.index: [v.field for v in r.violations] for r in results if r.status == I.EVENT_RESULT_STATUS_REJECTED}
    assert rejected == {10: ["event_type"], 50: ["subject_id"], 90: ["occurred_at"]}


async def _stream_ids(cluster: Cluster, namespace: str) -> list[str]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        ids: list[str] = []
        async for key in client.scan_iter(match=f"{namespace}:stream:events:*"):
            if key.endswith(b":epoch"):
                continue
            for _, fields in await client.xrange(key):
                ids.append(fields[b"event_id"].decode())
        return ids
    finally:
        await client.aclose()


async def test_the_same_events_sent_concurrently_by_five_clients_are_stored_once(cluster: Cluster, redis_namespace: str) -> None:
    """The same 500 events sent by 5 concurrent clients: 500 stored, 500 published, every other answer DUPLICATE."""
    events = [event_pb2.Event(event_id=f"dup-{i}", event_type="item.viewed", subject_id=f"s{i % 37}") for i in range(500)]

    async def client() -> list[int]:
        async with grpc.aio.insecure_channel(cluster.addresses["ingest"]) as channel:
            from overture.ingest.v1 import ingest_service_pb2_grpc

            stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
            statuses: list[int] = []
            for start in range(0, 500, 100):
                reply = await stub.IngestEvents(I.IngestEventsRequest(events=events[start:start + 100]), metadata=MD)
                statuses += [r.status for r in reply.results]
            return statuses

    answers = [s for statuses in await asyncio.gather(*(client() for _ in range(5))) for s in statuses]
    assert answers.count(I.EVENT_RESULT_STATUS_ACCEPTED) == 500
    assert answers.count(I.EVENT_RESULT_STATUS_DUPLICATE) == 2000

    async def all_published() -> list[str] | None:
        ids = [i for i in await _stream_ids(cluster, redis_namespace) if i.startswith("dup-")]
        return ids if len(ids) >= 500 else None

    published = await eventually(all_published, what="500 events on the stream")
    assert sorted(published) == sorted(e.event_id for e in events)
    for event_id in ("dup-0", "dup-499"):
        stored = (await cluster.ingest.GetEvent(I.GetEventRequest(event_id=event_id), metadata=MD)).event
        assert stored.state == ingested_event_pb2.INGESTED_EVENT_STATE_PUBLISHED


async def test_a_flood_over_quota_is_refused_with_a_retry_delay_and_nothing_accepted_is_lost(
    make_settings: Callable[..., Settings], tmp_path: Path,
) -> None:
    """Over the rate limit, gRPC says RESOURCE_EXHAUSTED with RetryInfo and HTTP says 429 with Retry-After; accepted events are all kept."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    # A refill rate too slow to matter for the test's duration: whatever the machine's speed, the 5th batch is over.
    async with running_cluster(make_settings, tmp_path / "mail", ingest_rate_per_second=1, ingest_burst=200) as c:
        accepted: list[str] = []
        refused: Any = None
        for batch in range(20):
            events = [event_pb2.Event(event_id=f"f-{batch}-{i}", event_type="item.viewed", subject_id="s") for i in range(50)]
            try:
                reply = await c.ingest.IngestEvents(I.IngestEventsRequest(events=events), metadata=MD)
            except grpc.aio.AioRpcError as error:
                refused = error
                break
            accepted += [r.event_id for r in reply.results if r.status == I.EVENT_RESULT_STATUS_ACCEPTED]
        assert refused is not None and refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        retry = [d for d in rpc_status.from_call(refused).details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
        assert retry, "RESOURCE_EXHAUSTED carries RetryInfo"
        info = error_details_pb2.RetryInfo()
        retry[0].Unpack(info)
        assert info.retry_delay.ToTimedelta().total_seconds() > 0
        async with httpx.AsyncClient(base_url=c.http, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
            flooded = await http.post("/automation/events", json={"events": [{"event_type": "a.b", "subject_id": "s"}] * 300})
        assert flooded.status_code == 429 and int(flooded.headers["retry-after"]) >= 1
        assert len(accepted) >= 200
        for event_id in accepted:
            await c.ingest.GetEvent(I.GetEventRequest(event_id=event_id), metadata=MD)
