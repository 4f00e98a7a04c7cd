"""SMS status callbacks end to end through the four services: ``fake_sms_provider`` posts a signed callback to ingest's
``POST /callbacks/{provider}/{tenant}``, which hands it to ConnectorService.ReportProviderCallback; the delivery moves
forward (never back), the status goes through the status outbox to ReportDeliveryStatus and becomes an ``sms.delivered``
event; an in-doubt send is settled by its callback; forged, malformed and misaddressed callbacks change nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from overture.common.v1 import event_pb2, messaging_pb2
from overture.connectors.v1 import connector_service_pb2 as conn
from overture.connectors.v1 import delivery_pb2
from overture.ingest.v1 import ingest_service_pb2 as ingest
from overture.orchestrator.v1 import journey_pb2
from overture.orchestrator.v1 import orchestrator_service_pb2 as orch
from overture.rules.v1 import rules_service_pb2 as rules
from overture_runtime.config import Settings
from overture_runtime.protojson import from_json
from overture_runtime.testing import free_port
from tests.conftest import TENANT, admin_metadata
from tests.thinpath import eventually, example_rule_set

from .cluster import Cluster, running_cluster
from .fake_sms_provider import ACCOUNT, TOKEN, FakeSmsProvider, fake_sms_provider

S = messaging_pb2
MD = admin_metadata()
JOURNEY = {
    "rule_set": "marketing-email",
    "trigger": {"event": {"event_type": "order.shipped"}},
    "templates": {"shipped": {"text_body": "Your order {{ event.attributes.order }} is on its way."}},
    "steps": [{"id": "text-shipped", "send": {"channel": "CHANNEL_SMS", "template": "shipped", "category": "MESSAGE_CATEGORY_TRANSACTIONAL"}}],
    "settings": {"allow_concurrent_runs": True},
}


@pytest.fixture
async def cluster(make_settings: Callable[..., Settings], tmp_path: Path) -> AsyncIterator[tuple[Cluster, FakeSmsProvider]]:
    """The four services, ingest's HTTP doors on a known port, and an SMS provider whose callbacks go to them."""
    port = free_port()
    async with fake_sms_provider() as fake:
        providers = json.dumps([
            {"name": "sms-main", "kind": "sms_http", "settings": {
                "api_url": fake.api_url, "account_id": ACCOUNT, "auth_token": TOKEN, "from": "+15005550006",
                "callback_base_url": f"http://127.0.0.1:{port}", "timeout_seconds": 0.5}},
            {"name": "smtp", "kind": "smtp"},
        ])

        def settings(**overrides: Any) -> Settings:
            return make_settings(connector_providers=providers, **overrides)

        async with running_cluster(settings, tmp_path / "mail", ingest_http_port=port) as running:
            yield running, fake


async def _delivery(c: Cluster, key: str) -> delivery_pb2.Delivery:
    return (await c.connectors.GetDeliveryStatus(conn.GetDeliveryStatusRequest(idempotency_key=key), metadata=MD)).delivery


async def _event(c: Cluster, event_id: str) -> event_pb2.Event | None:
    try:
        return (await c.ingest.GetEvent(ingest.GetEventRequest(event_id=event_id), metadata=MD)).event.event
    except grpc.aio.AioRpcError:
        return None


async def test_a_delivered_callback_reaches_the_orchestrator_as_an_sms_event(cluster: tuple[Cluster, FakeSmsProvider]) -> None:
    """A journey texts a subject; the provider's signed "delivered" callback makes the delivery DELIVERED and an sms.delivered event;
    a forged signature is 401 and a late "sent" or "failed" changes nothing."""
    c, fake = cluster
    name, spec = example_rule_set()
    created = await c.rules.CreateRuleSetVersion(rules.CreateRuleSetVersionRequest(rule_set=name, spec=spec, reason="t"), metadata=MD)
    await c.rules.ActivateRuleSetVersion(rules.ActivateRuleSetVersionRequest(
        rule_set=name, version=created.rule_set_version.version, reason="t"), metadata=MD)
    await c.orchestrator.PublishJourney(orch.PublishJourneyRequest(name="shipping", spec=from_json(JOURNEY, journey_pb2.JourneySpec),
                                                                   reason="t"), metadata=MD)
    identify = event_pb2.Event(event_type="identify", subject_id="dana", event_id="e-identify")
    identify.attributes.update({"traits": {"phone": "+1 415 555 2671"}})
    shipped = event_pb2.Event(event_type="order.shipped", subject_id="dana", event_id="e-shipped")
    shipped.attributes.update({"order": "A-17"})
    await c.ingest.IngestEvents(ingest.IngestEventsRequest(events=[identify]), metadata=MD)
    await c.ingest.IngestEvents(ingest.IngestEventsRequest(events=[shipped]), metadata=MD)
    sid = await eventually(lambda: _sid(fake), what="the text at the provider")
    assert fake.messages[sid]["to"] == "+14155552671" and fake.messages[sid]["body"] == "Your order A-17 is on its way."

    async def recorded() -> delivery_pb2.Delivery | None:
        runs = (await c.orchestrator.ListRuns(orch.ListRunsRequest(subject_id="dana"), metadata=MD)).runs
        if not runs:
            return None
        found = await _delivery(c, f"{runs[0].run_id}:text-shipped")
        return found if found.provider_message_id == sid else None

    delivery = await eventually(recorded, what="the delivery to record the provider's sid")
    forged = await fake.report(sid, "delivered", signature="bm90IGEgc2lnbmF0dXJl")
    assert forged.status_code == 401 and (await _delivery(c, delivery.idempotency_key)).status == S.DELIVERY_STATUS_SENT
    assert (await fake.report(sid, "delivered")).status_code == 204
    event = await eventually(lambda: _event(c, f"delivery:{delivery.delivery_id}:delivered"), what="the sms.delivered event")
    assert (event.event_type, event.attributes["status"], event.attributes["step_id"]) == ("sms.delivered", "delivered", "text-shipped")
    for late in ("sent", "failed"):
        assert (await fake.report(sid, late)).status_code == 204
    assert (await _delivery(c, delivery.idempotency_key)).status == S.DELIVERY_STATUS_DELIVERED


async def test_an_in_doubt_text_is_settled_by_its_callback(cluster: tuple[Cluster, FakeSmsProvider]) -> None:
    """A send whose answer is lost while the status lookup is down is IN_DOUBT under our reference; the provider's callback (carrying
    the reference and its sid) settles it DELIVERED and records the sid, and nothing is sent twice."""
    c, fake = cluster
    fake.drop_reply, fake.lookups_down = 1.0, True
    message = delivery_pb2.Message(idempotency_key="ops:text", channel=S.CHANNEL_SMS, subject_id="erin", address="+14155550123",
                                   content=delivery_pb2.MessageContent(text_body="Server down"),
                                   category=S.MESSAGE_CATEGORY_TRANSACTIONAL)
    doubtful = (await c.connectors.Send(conn.SendRequest(message=message), metadata=MD)).delivery
    assert doubtful.status == S.DELIVERY_STATUS_IN_DOUBT and doubtful.provider_message_id.startswith("ovr_")
    (sid,) = fake.dropped
    assert (await fake.report(sid, "delivered")).status_code == 204
    settled = await _delivery(c, "ops:text")
    assert (settled.status, settled.provider_message_id) == (S.DELIVERY_STATUS_DELIVERED, sid)
    again = await c.connectors.Send(conn.SendRequest(message=message), metadata=MD)
    assert again.duplicate and fake.sends == 1


@pytest.mark.parametrize(("path", "body", "status"), [
    ("/callbacks/nope/acme", b"MessageSid=SM1&MessageStatus=delivered", 404),
    ("/callbacks/smtp/acme", b"MessageSid=SM1&MessageStatus=delivered", 404),
    ("/callbacks/sms-main/unknown-tenant", b"MessageSid=SM1&MessageStatus=delivered", 404),
    ("/callbacks/SMS%20main/acme", b"MessageSid=SM1&MessageStatus=delivered", 404),
    ("/callbacks/sms-main/acme", b"%%%&&&==", 400),
    ("/callbacks/sms-main/acme", b"MessageSid=SM1&MessageStatus=delivered", 401),
    ("/callbacks/sms-main/acme", b"x" * (64 * 1024 + 1), 429),
])
async def test_misaddressed_malformed_and_unsigned_callbacks_get_a_clear_4xx(
        cluster: tuple[Cluster, FakeSmsProvider], path: str, body: bytes, status: int) -> None:
    """An unknown provider, a provider without callbacks, an unknown tenant or a bad name is 404, a body that is not a form is 400, an
    unsigned callback is 401, and a body over 64 KiB is refused; each answer is JSON naming the problem."""
    c, _ = cluster
    async with httpx.AsyncClient(base_url=c.http) as http:
        response = await http.post(path.replace("acme", TENANT), content=body,
                                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == status
    assert response.json()["error"]["reason"]


async def test_a_callback_signed_for_another_tenant_or_about_no_delivery_changes_nothing(cluster: tuple[Cluster, FakeSmsProvider]) -> None:
    """A callback replayed to another tenant's URL fails its signature (401); a correctly signed one about no known message is 204 and
    changes nothing."""
    c, fake = cluster
    message = delivery_pb2.Message(idempotency_key="ops:text2", channel=S.CHANNEL_SMS, subject_id="erin", address="+14155550124",
                                   content=delivery_pb2.MessageContent(text_body="Hello"), category=S.MESSAGE_CATEGORY_TRANSACTIONAL)
    await c.connectors.Send(conn.SendRequest(message=message), metadata=MD)
    (sid,) = fake.messages
    own = fake.messages[sid]["status_callback"]
    assert (await fake.report(sid, "delivered", post_to=own.replace(f"/{TENANT}", "/globex"))).status_code == 401
    fake.messages["SMunknown"] = {**fake.messages[sid], "sid": "SMunknown", "client_ref": "ovr_unknown"}
    assert (await fake.report("SMunknown", "delivered")).status_code == 204
    assert (await _delivery(c, "ops:text2")).status == S.DELIVERY_STATUS_SENT


async def _sid(fake: FakeSmsProvider) -> str:
    return next(iter(fake.messages), "")
