"""The in-app inbox end to end: the in_app connector stores a message once
per key, InboxService lists, counts, marks read and archives, and ingest's
Server-Sent Events stream shows new messages live and resumes from
Last-Event-ID."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from overture.common.v1 import messaging_pb2
from overture.connectors.v1 import connector_service_pb2 as conn
from overture.connectors.v1 import delivery_pb2, inbox_service_pb2, inbox_service_pb2_grpc
from overture_runtime.config import Settings
from tests.conftest import admin_metadata
from tests.thinpath import eventually

from .cluster import Cluster, running_cluster

MD = admin_metadata()
IS = inbox_service_pb2
PROVIDERS = json.dumps([{"name": "smtp", "kind": "smtp"}, {"name": "in-app", "kind": "in_app"}])


@pytest.fixture
async def cluster(make_settings: Callable[..., Settings], tmp_path: Path) -> AsyncIterator[tuple[Cluster, inbox_service_pb2_grpc.InboxServiceStub]]:
    """The four services with an in_app provider and signing keys, and an InboxService stub."""

    def settings(**overrides: Any) -> Settings:
        return make_settings(signing_keys="inbox-test-signing-key-0123456789", connector_providers=PROVIDERS,
                             inbox_heartbeat_seconds=0.2, **overrides)

    async with running_cluster(settings, tmp_path / "mail") as running, grpc.aio.insecure_channel(running.addresses["connectors"]) as channel:
        yield running, inbox_service_pb2_grpc.InboxServiceStub(channel)


def _in_app(key: str, title: str, subject: str = "bob") -> delivery_pb2.Message:
    message = delivery_pb2.Message(idempotency_key=key, channel=messaging_pb2.CHANNEL_IN_APP, subject_id=subject, address=subject,
                                   content=delivery_pb2.MessageContent(subject=title, text_body=f"{title} body"))
    message.content.data.update({"url": "https://example.com/orders/1"})
    return message


async def _events(lines: AsyncIterator[str], count: int) -> list[tuple[str, str, dict[str, Any]]]:
    """The next *count* events of an SSE response's lines, as (id, event, data); heartbeats skipped."""
    found: list[tuple[str, str, dict[str, Any]]] = []
    fields: dict[str, str] = {}
    async for line in lines:
        if line == "":
            if "event" in fields:
                found.append((fields.get("id", ""), fields["event"], json.loads(fields["data"])))
                if len(found) == count:
                    return found
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value
    return found


async def test_inbox_stores_once_lists_counts_marks_and_archives(cluster: tuple[Cluster, Any]) -> None:
    """A message sent twice with one key is stored once; the list is newest first and paginates; read and archive change the count."""
    c, inbox = cluster
    for key in ("r1:s", "r1:s", "r2:s", "r3:s"):
        sent = await c.connectors.Send(conn.SendRequest(message=_in_app(key, f"hello {key}")), metadata=MD)
        assert sent.delivery.status == messaging_pb2.DELIVERY_STATUS_SENT
    first = await inbox.ListInboxMessages(IS.ListInboxMessagesRequest(subject_id="bob", page_size=2), metadata=MD)
    assert [m.title for m in first.messages] == ["hello r3:s", "hello r2:s"] and first.next_page_token
    rest = await inbox.ListInboxMessages(IS.ListInboxMessagesRequest(subject_id="bob", page_size=2, page_token=first.next_page_token), metadata=MD)
    assert [m.title for m in rest.messages] == ["hello r1:s"] and not rest.next_page_token
    assert rest.messages[0].data["url"] == "https://example.com/orders/1"
    assert (await inbox.GetInboxUnreadCount(IS.GetInboxUnreadCountRequest(subject_id="bob"), metadata=MD)).unread_count == 3
    marked = await inbox.MarkInboxMessagesRead(IS.MarkInboxMessagesReadRequest(subject_id="bob", message_ids=[first.messages[0].message_id]),
                                               metadata=MD)
    assert marked.unread_count == 2
    archived = await inbox.ArchiveInboxMessages(IS.ArchiveInboxMessagesRequest(subject_id="bob", message_ids=[first.messages[1].message_id]),
                                                metadata=MD)
    assert archived.unread_count == 1
    assert len((await inbox.ListInboxMessages(IS.ListInboxMessagesRequest(subject_id="bob"), metadata=MD)).messages) == 2
    assert (await inbox.MarkAllInboxMessagesRead(IS.MarkAllInboxMessagesReadRequest(subject_id="bob"), metadata=MD)).marked_count == 1
    assert (await inbox.GetInboxUnreadCount(IS.GetInboxUnreadCountRequest(subject_id="bob"), metadata=MD)).unread_count == 0
    other = await inbox.ListInboxMessages(IS.ListInboxMessagesRequest(subject_id="carol"), metadata=MD)
    assert not other.messages


async def test_the_stream_shows_new_messages_live_and_resumes_after_last_event_id(cluster: tuple[Cluster, Any]) -> None:
    """The SSE stream opens with the unread count, then each new message as it is delivered; reconnecting with Last-Event-ID replays what was missed."""
    c, inbox = cluster
    await c.connectors.Send(conn.SendRequest(message=_in_app("s1:s", "first")), metadata=MD)
    token = (await inbox.CreateInboxToken(IS.CreateInboxTokenRequest(subject_id="bob"), metadata=MD)).token
    async with httpx.AsyncClient(timeout=30) as http:
        async with http.stream("GET", f"{c.http}/inbox/stream", params={"token": token}) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            lines = response.aiter_lines()
            opening = await _events(lines, 1)
            assert opening[0][1:] == ("unread", {"unread_count": 1})
            await c.connectors.Send(conn.SendRequest(message=_in_app("s2:s", "second")), metadata=MD)
            ((event_id, kind, data),) = await _events(lines, 1)
            assert (kind, data["message"]["title"], data["unread_count"]) == ("message", "second", 2)
            assert event_id == data["message"]["message_id"]
            await inbox.MarkAllInboxMessagesRead(IS.MarkAllInboxMessagesReadRequest(subject_id="bob"), metadata=MD)
            assert (await _events(lines, 1))[0][1:] == ("unread", {"unread_count": 0})
        first_id = (await inbox.ListInboxMessages(IS.ListInboxMessagesRequest(subject_id="bob"), metadata=MD)).messages[-1].message_id
        async with http.stream("GET", f"{c.http}/inbox/stream", params={"token": token}, headers={"last-event-id": first_id}) as response:
            replay = await _events(response.aiter_lines(), 2)
    assert [(kind, data.get("message", {}).get("title")) for _, kind, data in replay] == [("message", "second"), ("unread", None)]


@pytest.mark.parametrize("token", ["", "not-a-token", "A" * 9000])
async def test_a_stream_without_a_valid_token_is_a_json_401(cluster: tuple[Cluster, Any], token: str) -> None:
    """Opening the stream without a token sealed by CreateInboxToken answers 401 in the JSON error shape."""
    c, _ = cluster
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"{c.http}/inbox/stream", params={"token": token})
    assert answer.status_code == 401
    assert answer.json()["error"]["reason"] == "INVALID_INBOX_TOKEN"


async def test_bad_inbox_requests_name_their_fields(cluster: tuple[Cluster, Any]) -> None:
    """Missing subjects, no or too many ids, and a ttl out of range are INVALID_ARGUMENT naming the field."""
    _, inbox = cluster
    cases = [
        (inbox.ListInboxMessages, IS.ListInboxMessagesRequest(), "subject_id"),
        (inbox.MarkInboxMessagesRead, IS.MarkInboxMessagesReadRequest(subject_id="bob"), "message_ids"),
        (inbox.ArchiveInboxMessages, IS.ArchiveInboxMessagesRequest(subject_id="bob", message_ids=["x"] * 101), "message_ids"),
        (inbox.CreateInboxToken, IS.CreateInboxTokenRequest(subject_id="bob", ttl={"seconds": 5}), "ttl"),
    ]
    for method, request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await method(request, metadata=MD)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (error.value.details() or ""), error.value.details()


async def test_a_journeys_in_app_send_without_an_address_reaches_the_subjects_inbox_with_its_data(
    cluster: tuple[Cluster, inbox_service_pb2_grpc.InboxServiceStub],
) -> None:
    """An in-app send step with no `to` is delivered to its own subject's inbox, with the template's rendered data."""
    from overture.ingest.v1 import ingest_service_pb2 as I
    from overture.orchestrator.v1 import journey_pb2 as J
    from overture.orchestrator.v1 import orchestrator_service_pb2 as O

    from .test_thin_path import _event, publish_tour

    c, inbox = cluster
    await publish_tour(c)
    spec = J.JourneySpec(rule_set="marketing-email")
    spec.trigger.event.event_type = "order.shipped"
    spec.steps.add(id="notify-app", send=J.SendStep(channel=messaging_pb2.CHANNEL_IN_APP, template="shipped",
                                                    category=messaging_pb2.MESSAGE_CATEGORY_TRANSACTIONAL))
    spec.templates["shipped"].subject = "Order {{ event.attributes.order }} shipped"
    spec.templates["shipped"].data.update({"url": "https://example.com/orders/{{ event.attributes.order }}"})
    await c.orchestrator.PublishJourney(O.PublishJourneyRequest(name="shipping", spec=spec, reason="test"), metadata=MD)
    await c.ingest.IngestEvents(I.IngestEventsRequest(events=[_event("order.shipped", "kim", "shipped-1", order="A-7")]), metadata=MD)

    async def arrived() -> Any:
        found = (await inbox.ListInboxMessages(IS.ListInboxMessagesRequest(subject_id="kim"), metadata=MD)).messages
        return found or None

    (message,) = await eventually(arrived, what="the in-app message")
    assert message.title == "Order A-7 shipped" and message.data["url"] == "https://example.com/orders/A-7"
