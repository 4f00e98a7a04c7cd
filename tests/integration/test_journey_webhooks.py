"""A journey's webhook step calls its own URL through the connectors service
(signed, once per run and step), and keeps the endpoint's answer for the
steps after it to read as ``steps.<id>.response``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from overture.common.v1 import messaging_pb2
from overture.ingest.v1 import ingest_service_pb2 as I
from overture.orchestrator.v1 import journey_pb2 as J
from overture.orchestrator.v1 import orchestrator_service_pb2 as O
from overture.orchestrator.v1 import run_pb2
from overture_runtime.config import Settings
from overture_runtime.protojson import struct_to_dict
from tests.conftest import admin_metadata
from tests.thinpath import eventually

from .cluster import running_cluster
from .http_receiver import http_receiver
from .test_thin_path import _event, publish_tour

MD = admin_metadata()
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _providers() -> str:
    return json.dumps([
        {"name": "smtp", "kind": "smtp"},
        {"name": "journey-hooks", "kind": "webhook", "breaker": {"failure_threshold": 1000},
         "settings": {"secrets": [SECRET], "allowed_hosts": ["127.0.0.1"], "allowed_private_networks": ["127.0.0.1/32"]}},
    ])


def _journey(url: str) -> J.JourneySpec:
    spec = J.JourneySpec(rule_set="marketing-email")
    spec.trigger.event.event_type = "loyalty.joined"
    call = spec.steps.add(id="call", next="thanks")
    call.webhook.url = url + "/coupons/{{ profile.subject_id }}"
    call.webhook.body.update({"subject": "{{ profile.subject_id }}", "plan": "{{ event.attributes.plan }}"})
    call.webhook.keep_response = True
    spec.steps.add(id="thanks", send=J.SendStep(channel=messaging_pb2.CHANNEL_EMAIL, template="coupon"))
    spec.templates["coupon"].CopyFrom(J.MessageTemplate(subject="Your code {{ steps.call.response.body.code }}",
                                                        text_body="Status {{ steps.call.response.status }}"))
    return spec


async def test_a_webhook_step_calls_its_url_once_and_later_steps_read_its_kept_answer(
    make_settings: Callable[..., Settings], tmp_path: Path,
) -> None:
    """The step posts its rendered body to its rendered URL once, signed; the next step's email reads the answer's JSON body."""
    async with http_receiver() as receiver:
        def settings(**overrides: Any) -> Settings:
            return make_settings(connector_providers=_providers(), **overrides)

        receiver.answers[""] = (200, {"content-type": "application/json"})  # bodies without a key answer with the coupon
        receiver.bodies[""] = json.dumps({"code": "GOLD-42"}).encode()
        async with running_cluster(settings, tmp_path / "mail") as c:
            await publish_tour(c)
            await c.orchestrator.PublishJourney(O.PublishJourneyRequest(name="loyalty", spec=_journey(receiver.url), reason="test"),
                                                metadata=MD)
            await c.ingest.IngestEvents(I.IngestEventsRequest(events=[
                _event("identify", "ivy", traits={"email": "ivy@example.com"}),
                _event("consent.granted", "ivy", channel="email", purpose="marketing"),
                _event("loyalty.joined", "ivy", "joined-ivy", plan="gold"),
            ]), metadata=MD)

            async def asked() -> Any:
                return receiver.requests or None

            (request,) = await eventually(asked, what="the webhook call")
            assert request.path == "/hooks/coupons/ivy" and "webhook-signature" in request.headers
            assert json.loads(request.body) == {"subject": "ivy", "plan": "gold"}

            async def done() -> run_pb2.Run | None:
                runs = (await c.orchestrator.ListRuns(O.ListRunsRequest(subject_id="ivy", journey="loyalty"), metadata=MD)).runs
                return runs[0] if runs and runs[0].state in (run_pb2.RUN_STATE_COMPLETED, run_pb2.RUN_STATE_FAILED) else None

            run = await eventually(done, what="the run to end")
            assert run.state == run_pb2.RUN_STATE_COMPLETED, run
            call = next(s for s in run.steps if s.step_id == "call")
            assert struct_to_dict(call.output)["status"] == 200 and struct_to_dict(run.context)["call"]["response"]["body"] == {"code": "GOLD-42"}
            assert [m["Subject"] for m in c.mail.messages] == ["Your code GOLD-42"]
            assert len(receiver.requests) == 1  # once per run and step
