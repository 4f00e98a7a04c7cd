"""Bounces and complaints, end to end through the four services: a report
received over SMTP, HTTP or gRPC finds its delivery by Message-ID; a hard
bounce or a complaint suppresses the subject, so the next marketing send
is denied by suppression; a soft bounce suppresses nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import grpc
import httpx
import pytest

from overture.common.v1 import event_pb2, messaging_pb2
from overture.connectors.v1 import connector_service_pb2 as conn
from overture.ingest.v1 import ingest_service_pb2 as ingest
from overture.orchestrator.v1 import journey_pb2, run_pb2
from overture.orchestrator.v1 import orchestrator_service_pb2 as orch
from overture.rules.v1 import decision_pb2
from overture.rules.v1 import profile_service_pb2 as profiles
from overture.rules.v1 import rules_service_pb2 as rules
from overture_runtime.config import Settings
from overture_runtime.testing import free_port
from tests.conftest import ADMIN_TOKEN, admin_metadata
from tests.thinpath import eventually, example_journey, example_rule_set
from tests.unit.connectors.test_bounce_reports import arf, dsn

from .cluster import Cluster, running_cluster
from .connectors_support import email

MD = admin_metadata()


@pytest.fixture
async def cluster(make_settings: Callable[..., Settings], tmp_path: Path) -> AsyncIterator[tuple[Cluster, int]]:
    """The four services, the connectors service taking reports over SMTP on a port of its own."""
    port = free_port()

    def settings(**overrides: Any) -> Settings:
        return make_settings(feedback_smtp_port=port, **overrides)

    async with running_cluster(settings, tmp_path / "mail") as running:
        yield running, port


async def _publish(c: Cluster) -> None:
    name, spec = example_rule_set()
    created = await c.rules.CreateRuleSetVersion(rules.CreateRuleSetVersionRequest(rule_set=name, spec=spec, reason="t"), metadata=MD)
    await c.rules.ActivateRuleSetVersion(rules.ActivateRuleSetVersionRequest(
        rule_set=name, version=created.rule_set_version.version, reason="t"), metadata=MD)
    name, journey = example_journey()
    journey.settings.allow_concurrent_runs = True
    await c.orchestrator.PublishJourney(orch.PublishJourneyRequest(name=name, spec=journey, reason="t"), metadata=MD)


async def _signup(c: Cluster, subject: str, event_id: str) -> None:
    def event(event_type: str, **attributes: Any) -> event_pb2.Event:
        made = event_pb2.Event(event_type=event_type, subject_id=subject, event_id=f"{event_id}-{event_type}")
        made.attributes.update(attributes)
        return made

    await c.ingest.IngestEvents(ingest.IngestEventsRequest(events=[
        event("identify", traits={"email": f"{subject}@example.com", "plan": "pro"}),
        event("consent.granted", channel="email", purpose="marketing"),
        event("user.signed_up"),
    ]), metadata=MD)


async def _mail_to(c: Cluster, subject: str, count: int = 1) -> list[EmailMessage]:
    async def found() -> list[EmailMessage]:
        mine = [m for m in c.mail.messages if str(m["To"]) == f"{subject}@example.com"]
        return mine if len(mine) >= count else []

    mail = await eventually(found, what=f"{count} email(s) to {subject}")

    async def recorded() -> bool:  # the server has the message before the delivery records its Message-ID
        request = conn.GetDeliveryStatusRequest(idempotency_key=str(mail[-1]["X-Overture-Key"]))
        return bool((await c.connectors.GetDeliveryStatus(request, metadata=MD)).delivery.provider_message_id)

    await eventually(recorded, what="the delivery to record its Message-ID")
    return mail


async def _suppressions(c: Cluster, subject: str) -> list[str]:
    return list((await c.profiles.GetProfile(profiles.GetProfileRequest(subject_id=subject), metadata=MD)).profile.suppression_lists)


async def _event(c: Cluster, event_id: str) -> Any:
    try:
        return (await c.ingest.GetEvent(ingest.GetEventRequest(event_id=event_id), metadata=MD)).event.event
    except grpc.aio.AioRpcError:
        return None


async def test_a_hard_bounce_over_smtp_suppresses_and_the_next_marketing_send_is_denied(cluster: tuple[Cluster, int]) -> None:
    """A DSN for a hard bounce, sent to the feedback SMTP port, puts the subject on hard-bounces, emits email.bounced,
    marks the delivery BOUNCED, and the next marketing send to the subject is skipped, denied by suppression."""
    c, port = cluster
    await _publish(c)
    await _signup(c, "alice", "first")
    mail = (await _mail_to(c, "alice"))[0]
    key, message_id = str(mail["X-Overture-Key"]), str(mail["Message-ID"])
    errors, reply = await aiosmtplib.send(dsn(message_id=message_id), sender="mailer-daemon@mx.example.net", recipients=["bounces@overture.test"],
                                          hostname="127.0.0.1", port=port)
    assert not errors and reply.startswith("2.0.0")
    assert await eventually(lambda: _has(c, "alice", "hard-bounces"), what="the hard-bounces suppression")
    bounced = await eventually(lambda: _bounce_event(c, key), what="the email.bounced event")
    assert (bounced.event_type, bounced.attributes["bounce"], bounced.attributes["detail"]) == ("email.bounced", "hard", "failed 5.1.1")
    delivery = (await c.connectors.GetDeliveryStatus(conn.GetDeliveryStatusRequest(idempotency_key=key), metadata=MD)).delivery
    assert delivery.status == messaging_pb2.DELIVERY_STATUS_BOUNCED

    await c.ingest.IngestEvents(ingest.IngestEventsRequest(events=[_plain_event("user.signed_up", "alice", "second-signup")]), metadata=MD)

    async def second_run() -> run_pb2.Run | None:
        runs = (await c.orchestrator.ListRuns(orch.ListRunsRequest(subject_id="alice"), metadata=MD)).runs
        done = [r for r in runs if r.trigger_event_id == "second-signup" and r.state == run_pb2.RUN_STATE_COMPLETED]
        return done[0] if done else None

    run = await eventually(second_run, what="the second run")
    assert run.steps[0].state == run_pb2.STEP_RUN_STATE_SKIPPED
    decision = (await c.rules.GetDecision(rules.GetDecisionRequest(decision_id=run.steps[0].decision_id), metadata=MD)).decision
    denying = [(v.kind, v.id) for v in decision.verdicts if v.outcome == decision_pb2.VERDICT_OUTCOME_DENY]
    assert denying == [(decision_pb2.VERDICT_KIND_SUPPRESSION, "hard-bounces")]
    assert len(await _mail_to(c, "alice")) == 1


async def test_a_soft_bounce_over_http_suppresses_nothing(cluster: tuple[Cluster, int]) -> None:
    """A delayed-delivery DSN posted to /email/feedback is a soft bounce: an email.bounced event saying soft, and no suppression."""
    c, _ = cluster
    await _publish(c)
    await _signup(c, "bob", "first")
    mail = (await _mail_to(c, "bob"))[0]
    async with httpx.AsyncClient() as http:
        answer = await http.post(c.http + "/email/feedback", content=dsn(action="delayed", status="4.4.1", message_id=str(mail["Message-ID"])),
                                 headers={"authorization": f"Bearer {ADMIN_TOKEN}", "content-type": "message/rfc822"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["kind"] == "soft_bounce" and answer.json()["detail"] == "delayed 4.4.1"
    bounced = await eventually(lambda: _bounce_event(c, str(mail["X-Overture-Key"]), soft=True), what="the soft email.bounced event")
    assert bounced.attributes["bounce"] == "soft"
    assert "hard-bounces" not in await _suppressions(c, "bob")


async def test_a_complaint_over_grpc_suppresses_the_subject(cluster: tuple[Cluster, int]) -> None:
    """An ARF abuse report given to ReportEmailFeedback answers COMPLAINT with the delivery, and puts the subject on complaints."""
    c, _ = cluster
    await _publish(c)
    await _signup(c, "carol", "first")
    mail = (await _mail_to(c, "carol"))[0]
    report = arf().replace(b"<b406e4c4126c1b15421f1a917eaeb4fe@overture.test>", str(mail["Message-ID"]).encode())
    answer = await c.connectors.ReportEmailFeedback(conn.ReportEmailFeedbackRequest(raw_message=report), metadata=MD)
    assert answer.kind == conn.EMAIL_FEEDBACK_KIND_COMPLAINT and answer.delivery_id
    assert await eventually(lambda: _has(c, "carol", "complaints"), what="the complaints suppression")


async def test_reports_about_nothing_known_change_nothing(cluster: tuple[Cluster, int]) -> None:
    """A bounce for an unknown Message-ID names no delivery, mail that is not a report is UNSPECIFIED, and an empty report is INVALID_ARGUMENT."""
    c, port = cluster
    unknown = await c.connectors.ReportEmailFeedback(conn.ReportEmailFeedbackRequest(raw_message=dsn(message_id="<nobody@x>")), metadata=MD)
    assert unknown.kind == conn.EMAIL_FEEDBACK_KIND_HARD_BOUNCE and unknown.delivery_id == ""
    plain = await c.connectors.ReportEmailFeedback(conn.ReportEmailFeedbackRequest(raw_message=b"Subject: hi\r\n\r\nhello"), metadata=MD)
    assert plain.kind == conn.EMAIL_FEEDBACK_KIND_UNSPECIFIED
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await c.connectors.ReportEmailFeedback(conn.ReportEmailFeedbackRequest(), metadata=MD)
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    errors, reply = await aiosmtplib.send(b"Subject: hi\r\n\r\nnot a report", sender="x@example.com", recipients=["fbl@overture.test"],
                                          hostname="127.0.0.1", port=port)
    assert not errors and reply.startswith("2.0.0")


@pytest.mark.parametrize(("headers", "status"), [
    ({"content-type": "message/rfc822"}, 401),
    ({"authorization": "Bearer not-a-token", "content-type": "message/rfc822"}, 401),
    ({"authorization": f"Bearer {ADMIN_TOKEN}", "content-type": "application/json"}, 400),
])
async def test_the_http_door_checks_credentials_and_type(cluster: tuple[Cluster, int], headers: dict[str, str], status: int) -> None:
    """/email/feedback answers 401 without a valid token and 400 for a body that is not a mail message, in the JSON error shape."""
    c, _ = cluster
    async with httpx.AsyncClient() as http:
        answer = await http.post(c.http + "/email/feedback", content=dsn(), headers=headers)
    assert answer.status_code == status
    assert answer.json()["error"]["message"]


def _plain_event(event_type: str, subject: str, event_id: str) -> Any:
    return event_pb2.Event(event_type=event_type, subject_id=subject, event_id=event_id)


async def _has(c: Cluster, subject: str, suppression: str) -> bool:
    return suppression in await _suppressions(c, subject)


async def _bounce_event(c: Cluster, key: str, *, soft: bool = False) -> Any:
    deliveries = await c.connectors.GetDeliveryStatus(conn.GetDeliveryStatusRequest(idempotency_key=key), metadata=MD)
    return await _event(c, f"delivery:{deliveries.delivery.delivery_id}:bounced{'-soft' if soft else ''}")


async def test_bounces_of_sends_outside_journeys_still_suppress(cluster: tuple[Cluster, int]) -> None:
    """A hard bounce of a direct Send (a key that names no run, with or without a colon) and of an Enqueue'd message, and a
    complaint about a direct Send, each put the subject on hard-bounces or complaints and emit the email event; the next
    marketing decision for a bounced subject is denied by suppression."""
    c, port = cluster
    await _publish(c)
    await _signup(c, "dave", "first")  # consent, so that only the suppression can deny dave later
    await _mail_to(c, "dave")
    for key, subject in (("order-42:receipt", "dave"), ("receipt-43", "erin"), ("receipt-44", "gina")):
        await c.connectors.Send(conn.SendRequest(message=email(key, address=f"{subject}@example.com", subject_id=subject)), metadata=MD)
    template = journey_pb2.MessageTemplate(subject="Your invoice", text_body="Invoice attached.")
    await c.orchestrator.Enqueue(orch.EnqueueRequest(subject_id="frank", request_id="invoice-7", rule_set="marketing-email",
                                                     channel=messaging_pb2.CHANNEL_EMAIL, template=template, to="frank@example.com",
                                                     category=messaging_pb2.MESSAGE_CATEGORY_TRANSACTIONAL), metadata=MD)
    receipt, erin, gina, frank = [(await _mail_to(c, s, 2 if s == "dave" else 1))[-1] for s in ("dave", "erin", "gina", "frank")]
    for mail in (receipt, erin, frank):
        errors, _ = await aiosmtplib.send(dsn(message_id=str(mail["Message-ID"])), sender="mailer-daemon@mx.example.net",
                                          recipients=["bounces@overture.test"], hostname="127.0.0.1", port=port)
        assert not errors
    report = arf().replace(b"<b406e4c4126c1b15421f1a917eaeb4fe@overture.test>", str(gina["Message-ID"]).encode())
    await c.connectors.ReportEmailFeedback(conn.ReportEmailFeedbackRequest(raw_message=report), metadata=MD)
    for subject, suppression in (("dave", "hard-bounces"), ("erin", "hard-bounces"), ("frank", "hard-bounces"), ("gina", "complaints")):
        assert await eventually(lambda s=subject, name=suppression: _has(c, s, name), what=f"{subject} on {suppression}")  # type: ignore[misc]
    bounced = await eventually(lambda: _bounce_event(c, "order-42:receipt"), what="dave's email.bounced")
    assert (bounced.event_type, bounced.subject_id, bounced.attributes["bounce"]) == ("email.bounced", "dave", "hard")
    gina_delivery = await c.connectors.GetDeliveryStatus(conn.GetDeliveryStatusRequest(idempotency_key="receipt-44"), metadata=MD)
    assert gina_delivery.delivery.status == messaging_pb2.DELIVERY_STATUS_COMPLAINED
    complained = await _event(c, f"delivery:{gina_delivery.delivery.delivery_id}:complained")
    assert complained is not None and complained.event_type == "email.complained"
    decision = (await c.rules.Evaluate(rules.EvaluateRequest(rule_set="marketing-email", subject_id="dave", channel=messaging_pb2.CHANNEL_EMAIL),
                                       metadata=MD)).decision
    denying = [(v.kind, v.id) for v in decision.verdicts if v.outcome == decision_pb2.VERDICT_OUTCOME_DENY]
    assert denying == [(decision_pb2.VERDICT_KIND_SUPPRESSION, "hard-bounces")]
