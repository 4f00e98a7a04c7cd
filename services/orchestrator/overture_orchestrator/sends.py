"""The sends of a batch: rendered, decided together, delivered together.

For each tenant's sends of a batch: every message is rendered first (in the
Jinja2 sandbox, strictly), so a send that cannot happen (a template value the
subject lacks, no address on the channel) is settled without a decision and
holds no cap slot. Notify steps (to a team, not to the subject) skip the
decision: they are not subject to the subject's consent or caps. The rest are decided with one ``EvaluateBatch`` in
``RESERVE_AND_COMMIT`` mode: consent, rules, quiet hours and caps in one
atomic step, the slots taken as committed because the provider call follows
at once. They are delivered with one ``SendBatch``; a message that fails for
good gives its slot back (``RELEASE``).

Every effect carries a key derived from ``run_id:step_id``: the decision id
(from the run, the step and the decisions made there: a replayed decision
returns the first answer and takes no second slot) and the idempotency key
connectors claim before calling the provider. A batch executed again after a
crash repeats no effect.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import structlog

from overture.common.v1 import messaging_pb2
from overture.connectors.v1 import connector_service_pb2, connector_service_pb2_grpc, delivery_pb2
from overture.orchestrator.v1 import journey_pb2
from overture.rules.v1 import decision_pb2, rules_service_pb2, rules_service_pb2_grpc
from overture_runtime.config import Settings
from overture_runtime.privacy import mask
from overture_runtime.protojson import struct_from_dict, struct_to_dict
from overture_runtime.templates import event_scope, run_scope, template_scope

from .calls import Transient, call
from .contexts import effect_key, steps_of
from .model import StepState
from .rendering import RenderError, message_of, render_message, render_text, render_value
from .tokens import Steps, Token

__all__ = ["Sender", "default_address"]

log = structlog.get_logger("overture.orchestrator")
D = decision_pb2
_NS = uuid.UUID("6f1c4d2e-8a5b-4c3d-9e7f-0a1b2c3d4e5f")
_ADDRESS_TRAIT = {messaging_pb2.CHANNEL_EMAIL: "email", messaging_pb2.CHANNEL_SMS: "phone", messaging_pb2.CHANNEL_WEBHOOK: "webhook_url"}
_TO_SUBJECT = frozenset({messaging_pb2.CHANNEL_IN_APP, messaging_pb2.CHANNEL_PUSH})
_EVALUATE_CHUNK = 1000
_SEND_CHUNK = 500


class _Send:
    """A send step's message while its batch is decided and delivered."""

    __slots__ = ("address", "data", "rendered", "token")

    def __init__(self, token: Token, rendered: dict[str, str], address: str, data: dict[str, Any]) -> None:
        self.token = token
        self.rendered = rendered
        self.address = address
        self.data = data


class Sender:
    """Decides and delivers the send steps of a batch."""

    def __init__(self, *, steps: Steps, settings: Settings, rules: rules_service_pb2_grpc.RulesServiceStub,
                 connectors: connector_service_pb2_grpc.ConnectorServiceStub) -> None:
        self._steps = steps
        self._settings = settings
        self._rules = rules
        self._connectors = connectors

    async def send(self, tokens: Sequence[Token], profiles: Mapping[tuple[str, str], Any]) -> None:
        """Move every token (each at a send or notify step whose subject's
        profile was read) past its step, or into a wait, retry or failure."""
        decide: dict[str, list[_Send]] = {}
        notify: dict[str, list[_Send]] = {}
        for token in tokens:
            prepared = self._render(token, profiles[(token.work.tenant, token.work.subject_id)])
            if prepared is not None:
                kind = token.step.WhichOneof("kind")
                (decide if kind == "send" else notify).setdefault(token.work.tenant, []).append(prepared)
        for tenant, group in decide.items():
            for start in range(0, len(group), _EVALUATE_CHUNK):
                await self._decide_and_deliver(tenant, group[start:start + _EVALUATE_CHUNK])
        for tenant, group in notify.items():
            for start in range(0, len(group), _SEND_CHUNK):
                await self._deliver(tenant, group[start:start + _SEND_CHUNK])

    def _render(self, token: Token, profile: Mapping[str, Any] | Transient) -> _Send | None:
        """The message of the token's step, or None when the step was settled without sending."""
        step, work = token.step, token.work
        if isinstance(profile, Transient):
            self._steps.retry(token, step, str(profile))
            return None
        assert token.journey is not None
        scope = template_scope(profile=profile, event=event_scope(work.trigger_event),
                               run=run_scope(run_id=work.run_id, journey=work.journey, step_id=step.id), steps=steps_of(work.context))
        try:
            if step.WhichOneof("kind") == "webhook":
                url = render_text(step.webhook.url, scope, where=f"the URL of step {step.id!r}")
                body = render_value(struct_to_dict(step.webhook.body), scope, where=f"the body of step {step.id!r}")
                return _Send(token, {"to": url, "subject": "", "text_body": "", "html_body": ""}, url, body)
            template, to = message_of(step)
            rendered = render_message(token.journey.templates, template, to, scope, step_id=step.id)
            data = render_value(struct_to_dict(token.journey.spec.templates[template].data), scope, where=f"template {template!r} data")
        except RenderError as error:
            self._steps.fail(token, step.id, str(error))
            return None
        address = rendered["to"] or (default_address(step.send, profile, scope["event"]) if step.WhichOneof("kind") == "send" else "")
        if not address:
            self._steps.complete(token, step, StepState.SKIPPED, step.next, "the subject has no address for this channel")
            return None
        if step.WhichOneof("kind") == "send":
            token.decision_id = str(uuid.uuid5(_NS, f"{work.tenant}:{effect_key(work.run_id, step.id, work.context)}:{work.evaluations}"))
        return _Send(token, rendered, address, data)

    async def _decide_and_deliver(self, tenant: str, sends: Sequence[_Send]) -> None:
        requests = []
        for s in sends:
            step, work = s.token.step, s.token.work
            assert s.token.journey is not None
            requests.append(rules_service_pb2.EvaluateRequest(
                rule_set=s.token.journey.spec.rule_set, subject_id=work.subject_id, channel=step.send.channel, tags=step.send.tags,
                category=step.send.category, priority=step.send.priority, context=work.trigger_event.attributes,
                mode=D.EVALUATION_MODE_RESERVE_AND_COMMIT, decision_id=s.token.decision_id))
        deliver: list[_Send] = []
        for s, decision in await self._evaluate(tenant, sends, requests):
            token, step = s.token, s.token.step
            if not decision.allowed:
                denying = [v for v in decision.verdicts if v.outcome in (D.VERDICT_OUTCOME_DENY, D.VERDICT_OUTCOME_ERROR)]
                if denying and all(v.kind == D.VERDICT_KIND_SYSTEM for v in denying):
                    # Failing closed on a store outage is not a verdict about
                    # the person: decide again later, with a new decision.
                    token.work.evaluations += 1
                    self._steps.retry(token, step, decision.summary)
                else:
                    self._steps.complete(token, step, StepState.SKIPPED, step.next, decision.summary)
            elif decision.HasField("defer_until"):
                wake = decision.defer_until.ToDatetime(tzinfo=dt.UTC)
                token.work.evaluations += 1
                token.work.attempts = 0
                self._steps.wait(token, step, wake, f"deferred by quiet hours until {wake.isoformat()}")
            elif decision.reservation_state == D.RESERVATION_STATE_RELEASED:
                # A repeat of a decision whose slot was given back: decide anew.
                token.work.evaluations += 1
                self._steps.retry(token, step, "the decision's reservation was released; deciding again")
            else:
                deliver.append(s)
        for start in range(0, len(deliver), _SEND_CHUNK):
            await self._deliver(tenant, deliver[start:start + _SEND_CHUNK])

    async def _evaluate(self, tenant: str, sends: Sequence[_Send], requests: Sequence[rules_service_pb2.EvaluateRequest],
                        ) -> list[tuple[_Send, decision_pb2.Decision]]:
        """One EvaluateBatch; the (send, decision) pairs that have a decision.
        Items the rules service refused fail; a transient failure retries them all."""
        try:
            response = await call(self._settings, self._rules.EvaluateBatch, rules_service_pb2.EvaluateBatchRequest(requests=requests),
                                  tenant, "rules")
        except Transient as error:
            for s in sends:
                self._steps.retry(s.token, s.token.step, str(error))
            return []
        except grpc.aio.AioRpcError as error:
            for s in sends:
                self._steps.fail(s.token, s.token.step.id, f"rules refused: {error.code().name}: {error.details()}")
            return []
        decided = []
        for s, result in zip(sends, response.results, strict=True):
            if result.violations:
                first = result.violations[0]
                self._steps.fail(s.token, s.token.step.id, f"rules refused: {first.field}: {first.description}")
            else:
                decided.append((s, result.decision))
        return decided

    async def _release(self, tenant: str, tokens: Sequence[Token]) -> None:
        """Give cap slots back; if that fails, the ledger keeps counting them (it errs on sending less)."""
        tokens = [t for t in tokens if t.decision_id]  # notify steps decide nothing
        if not tokens:
            return
        try:
            await call(self._settings, self._rules.EvaluateBatch, rules_service_pb2.EvaluateBatchRequest(requests=[
                rules_service_pb2.EvaluateRequest(decision_id=t.decision_id, mode=D.EVALUATION_MODE_RELEASE)
                for t in tokens]), tenant, "rules")
        except (grpc.aio.AioRpcError, Transient) as error:
            log.warning("run.release_failed", count=len(tokens), error=str(error)[:200])

    async def _deliver(self, tenant: str, sends: Sequence[_Send]) -> None:
        messages = [_message(s) for s in sends]
        releases = []
        for s, result in zip(sends, await self._send_batch(tenant, messages), strict=True):
            token, step = s.token, s.token.step
            if isinstance(result, Transient):
                self._steps.retry(token, step, str(result))
            elif isinstance(result, str):
                releases.append(token)
                self._steps.fail(token, step.id, f"connectors refused: {result}")
            elif result.status == messaging_pb2.DELIVERY_STATUS_SENDING:
                self._steps.retry(token, step, "the delivery is still in flight")
            elif result.status == messaging_pb2.DELIVERY_STATUS_FAILED:
                releases.append(token)
                self._steps.fail(token, step.id, f"delivery failed: {result.last_error}")
            else:
                name = messaging_pb2.DeliveryStatus.Name(result.status).removeprefix("DELIVERY_STATUS_").lower()
                token.effects.actions += 1
                self._steps.complete(token, step, StepState.COMPLETED, step.next, "sent" if name == "sent" else f"delivery {name}",
                                     delivery_id=result.delivery_id, detail=_detail(s, result))
        await self._release(tenant, releases)

    async def _send_batch(self, tenant: str, messages: Sequence[delivery_pb2.Message]) -> list[Any]:
        """One result per message: its Delivery, a Transient, or why connectors refused it."""
        try:
            response = await call(self._settings, self._connectors.SendBatch, connector_service_pb2.SendBatchRequest(messages=messages),
                                  tenant, "connectors", batch=True)
        except Transient as error:
            return [error] * len(messages)
        except grpc.aio.AioRpcError as error:
            return [f"{error.code().name}: {error.details()}"] * len(messages)
        return [_batch_result(r) for r in response.results]


def s_channel(step: journey_pb2.Step) -> messaging_pb2.Channel.ValueType:
    """The channel of a send, notify or webhook step."""
    kind = step.WhichOneof("kind")
    if kind == "webhook":
        return messaging_pb2.CHANNEL_WEBHOOK
    return step.notify.channel if kind == "notify" else step.send.channel


def _detail(s: _Send, delivery: Any) -> dict[str, Any]:
    """What a delivered step read and produced, masked, for the run's timeline; a kept response goes to the run's context."""
    step = s.token.step
    channel = messaging_pb2.Channel.Name(s_channel(step)).removeprefix("CHANNEL_").lower()
    if step.WhichOneof("kind") == "webhook":
        output: dict[str, Any] = {}
        if delivery.HasField("response"):
            response = struct_to_dict(delivery.response)
            key = f"{step.id}.response"
            s.token.effects.context[key] = s.token.work.context[key] = response
            output["status"] = response.get("status")
        return {"input": {"channel": channel, "url": mask_url(s.address)}, "output": output}
    template, _ = message_of(step)
    return {"input": {"channel": channel, "template": template, "to": mask(s.address)}}


def mask_url(url: str) -> str:
    """A URL's scheme and host only: paths and queries may carry tokens or personal data."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0].split('?', 1)[0]}/..." if rest else mask(url)


def _message(s: _Send) -> delivery_pb2.Message:
    """The connectors' message of a send or notify step."""
    step, work = s.token.step, s.token.work
    content = delivery_pb2.MessageContent(subject=s.rendered["subject"], text_body=s.rendered["text_body"],
                                          html_body=s.rendered["html_body"], data=struct_from_dict(s.data) if s.data else None)
    metadata = {"run_id": work.run_id, "journey": work.journey, "step_id": step.id}
    if step.WhichOneof("kind") == "webhook":
        return delivery_pb2.Message(
            idempotency_key=effect_key(work.run_id, step.id, work.context), channel=messaging_pb2.CHANNEL_WEBHOOK, subject_id=work.subject_id,
            address=step.id, content=delivery_pb2.MessageContent(data=struct_from_dict(s.data)),
            category=messaging_pb2.MESSAGE_CATEGORY_TRANSACTIONAL, metadata=metadata,
            webhook=delivery_pb2.WebhookOptions(url=s.address, keep_response=step.webhook.keep_response, data_as_body=True))
    if step.WhichOneof("kind") == "notify":
        notify = step.notify
        if notify.task:
            metadata.update(task="true", assignee=notify.assignee)
        return delivery_pb2.Message(idempotency_key=effect_key(work.run_id, step.id, work.context), channel=notify.channel, subject_id=work.subject_id,
                                    address=s.address, content=content, category=messaging_pb2.MESSAGE_CATEGORY_TRANSACTIONAL,
                                    metadata=metadata)
    send = step.send
    metadata["decision_id"] = s.token.decision_id
    return delivery_pb2.Message(idempotency_key=effect_key(work.run_id, step.id, work.context), channel=send.channel, subject_id=work.subject_id,
                                address=s.address, content=content, category=send.category, tags=send.tags, metadata=metadata,
                                email=delivery_pb2.EmailOptions(track_opens=send.track_opens, track_clicks=send.track_clicks))


def _batch_result(result: Any) -> Any:
    """A SendBatch result as what ``Send`` would have given: the delivery, a
    Transient for what the provider could not take for now, or the refusal."""
    if result.HasField("error"):
        error = result.error
        if error.code == grpc.StatusCode.UNAVAILABLE.value[0]:
            return Transient(f"connectors: UNAVAILABLE: {error.message}")
        return f"{error.reason}: {error.message}"
    if result.violations:
        return f"{result.violations[0].field}: {result.violations[0].description}"
    if result.HasField("delivery"):
        return result.delivery
    return Transient("the connector gave no result")


def default_address(send: journey_pb2.SendStep, profile: Mapping[str, Any], event: Mapping[str, Any]) -> str:
    """When the step has no ``to``: the subject itself on channels that
    deliver to subjects (in-app inbox, web push: their subscriptions are the
    subject's), else the channel's trait (``email`` for email) of the
    profile, then of the event's attributes."""
    if send.channel in _TO_SUBJECT:
        return str(profile.get("subject_id") or event.get("subject_id") or "")
    trait = _ADDRESS_TRAIT.get(send.channel, "")
    value = profile.get("traits", {}).get(trait) or event["attributes"].get(trait)
    return str(value).strip() if value else ""
