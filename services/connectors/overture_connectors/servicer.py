"""The connectors service's gRPC servicer: validation and translation."""

from __future__ import annotations

import grpc

from overture.common.v1 import messaging_pb2
from overture.connectors.v1 import connector_service_pb2, connector_service_pb2_grpc, delivery_pb2
from overture_runtime import Violations, current_principal
from overture_runtime.edge import item_violations
from overture_runtime.errors import FieldViolation, OvertureError, Unimplemented
from overture_runtime.idempotency import Idempotency
from overture_runtime.validation import (
    check_identifier,
    check_reason,
    decode_page_token,
    encode_page_token,
    page_size,
    to_proto_violations,
)

from .bounce_reports import MAX_REPORT, FeedbackKind
from .breaker import CircuitState
from .callbacks import CallbackIntake
from .deliveries import MAX_BATCH, DeliveryService, Outcome, check_batch_size, to_proto
from .feedback import FeedbackIntake
from .message_checks import validate_message
from .resolutions import FILTERABLE, RESOLUTIONS, Resolutions

C = connector_service_pb2
_ITEM_VIOLATIONS_MAX = 20
_CALLBACK_HEADERS = 64
_CALLBACK_HEADER_BYTES = 8 * 1024
_CALLBACK_BODY = 64 * 1024
_RESPONSES_MAX = 2 * 1024 * 1024
"""The most bytes of kept responses one SendBatch answer carries (a gRPC message is at most 4 MiB)."""
_CIRCUIT = {CircuitState.CLOSED: delivery_pb2.CIRCUIT_STATE_CLOSED, CircuitState.OPEN: delivery_pb2.CIRCUIT_STATE_OPEN,
            CircuitState.HALF_OPEN: delivery_pb2.CIRCUIT_STATE_HALF_OPEN}


def _capped(violations: list[FieldViolation]) -> list[FieldViolation]:
    """At most :data:`_ITEM_VIOLATIONS_MAX` violations per message, so that 500
    hostile messages cannot make an answer larger than a client can read."""
    if len(violations) <= _ITEM_VIOLATIONS_MAX:
        return violations
    rest = len(violations) - _ITEM_VIOLATIONS_MAX + 1
    return [*violations[:_ITEM_VIOLATIONS_MAX - 1], FieldViolation("", f"and {rest} more problems", "TOO_MANY_PROBLEMS")]


def _batch_error(error: OvertureError) -> C.SendBatchError:
    result = C.SendBatchError(code=error.code.value[0], reason=error.reason, message=error.message)
    if error.retry_after is not None:
        result.retry_delay.FromTimedelta(error.retry_after)
    return result


def _fill(result: C.SendBatchResult, outcome: Outcome) -> None:
    if outcome.delivery is not None:
        result.delivery.CopyFrom(outcome.delivery)
    result.duplicate = outcome.duplicate
    if outcome.error is not None:
        result.error.CopyFrom(_batch_error(outcome.error))


class ConnectorServicer(connector_service_pb2_grpc.ConnectorServiceServicer):
    """``overture.connectors.v1.ConnectorService``."""

    def __init__(self, *, deliveries: DeliveryService, resolutions: Resolutions, idempotency: Idempotency,
                 feedback: FeedbackIntake | None = None, callbacks: CallbackIntake | None = None) -> None:
        self._deliveries = deliveries
        self._resolutions = resolutions
        self._idempotency = idempotency
        self._feedback = feedback
        self._callbacks = callbacks

    async def Send(self, request: C.SendRequest, context: grpc.aio.ServicerContext) -> C.SendResponse:
        tenant = current_principal().tenant
        v = Violations()
        if not request.HasField("message"):
            v.add("message", "message is required", "REQUIRED")
        else:
            validate_message(v, request.message)
        v.raise_if_any("the message is invalid")
        delivery, duplicate = await self._deliveries.send(tenant, request.message)
        return C.SendResponse(delivery=delivery, duplicate=duplicate)

    async def SendBatch(self, request: C.SendBatchRequest, context: grpc.aio.ServicerContext) -> C.SendBatchResponse:
        tenant = current_principal().tenant
        check_batch_size(len(request.messages))
        v = Violations()
        if not request.messages:
            v.add("messages", f"messages must hold 1 to {MAX_BATCH} messages", "REQUIRED")
        v.raise_if_any("the batch is invalid")
        response = C.SendBatchResponse()
        valid: list[int] = []
        for index, message in enumerate(request.messages):
            problems = Violations(item_violations(message))
            if not problems:
                validate_message(problems, message, prefix="")
            result = response.results.add(index=index)
            if problems:
                result.violations.extend(to_proto_violations(_capped(problems.items)))
            else:
                valid.append(index)
        outcomes = await self._deliveries.send_many(tenant, [request.messages[i] for i in valid])
        budget = _RESPONSES_MAX
        for index, outcome in zip(valid, outcomes, strict=True):
            _fill(response.results[index], outcome)
            delivery = response.results[index].delivery
            if delivery.HasField("response"):
                budget -= delivery.response.ByteSize()
                if budget < 0:  # past the answer's share: GetDeliveryStatus has it
                    delivery.ClearField("response")
        return response

    async def GetDeliveryStatus(self, request: C.GetDeliveryStatusRequest, context: grpc.aio.ServicerContext) -> C.GetDeliveryStatusResponse:
        tenant = current_principal().tenant
        v = Violations()
        if bool(request.delivery_id) == bool(request.idempotency_key):
            v.add("delivery_id", "set exactly one of delivery_id and idempotency_key", "ONE_OF")
        check_identifier(v, "delivery_id", request.delivery_id, required=False)
        check_identifier(v, "idempotency_key", request.idempotency_key, required=False)
        v.raise_if_any()
        delivery = await self._deliveries.get(tenant, delivery_id=request.delivery_id, idempotency_key=request.idempotency_key)
        return C.GetDeliveryStatusResponse(delivery=delivery)

    async def ListDeliveries(self, request: C.ListDeliveriesRequest, context: grpc.aio.ServicerContext) -> C.ListDeliveriesResponse:
        tenant = current_principal().tenant
        v = Violations()
        size = page_size(v, request.page_size)
        status = _status_name(request.status)
        if request.status and status not in FILTERABLE:
            v.add("status", f"only {' and '.join(s.upper() for s in FILTERABLE)} can be filtered on", "NOT_FILTERABLE")
        v.raise_if_any()
        before = str(decode_page_token(request.page_token, before=str).get("before", ""))
        rows = await self._resolutions.list(tenant, status=status if request.status else "", before=before, limit=size + 1)
        token = encode_page_token({"before": rows[size - 1].delivery_id}) if len(rows) > size else ""
        return C.ListDeliveriesResponse(deliveries=[to_proto(row) for row in rows[:size]], next_page_token=token)

    async def ResolveDelivery(self, request: C.ResolveDeliveryRequest, context: grpc.aio.ServicerContext) -> C.ResolveDeliveryResponse:
        principal = current_principal()
        v = Violations()
        check_identifier(v, "idempotency_key", request.idempotency_key)
        resolution = _status_name(request.resolution)
        if not request.resolution:
            v.add("resolution", "resolution is required: SENT or FAILED", "REQUIRED")
        elif resolution not in RESOLUTIONS:
            v.add("resolution", "an in-doubt delivery can be resolved only as SENT or FAILED", "INVALID_RESOLUTION")
        check_reason(v, request.reason)
        check_identifier(v, "request_id", request.request_id, required=False)
        v.raise_if_any()

        async def resolve() -> C.ResolveDeliveryResponse:
            row = await self._resolutions.resolve(principal.tenant, idempotency_key=request.idempotency_key, resolution=resolution,
                                                  reason=request.reason, actor=principal.name)
            return C.ResolveDeliveryResponse(delivery=to_proto(row))

        return await self._idempotency.run(tenant=principal.tenant, method="ResolveDelivery", request_id=request.request_id,
                                           request=request, response_type=C.ResolveDeliveryResponse, compute=resolve)

    async def ListConnectors(self, request: C.ListConnectorsRequest, context: grpc.aio.ServicerContext) -> C.ListConnectorsResponse:
        current_principal()
        v = Violations()
        size = page_size(v, request.page_size)
        v.raise_if_any()
        start = int(decode_page_token(request.page_token, offset=int).get("offset", 0))
        names = sorted(self._deliveries.connectors)
        page = names[start:start + size]
        dispatcher = self._deliveries.dispatcher
        connectors = [
            delivery_pb2.Connector(
                name=name, channel=self._deliveries.connectors[name].channel,
                default=self._deliveries.defaults.get(self._deliveries.connectors[name].channel) == name,
                circuit_state=_CIRCUIT[dispatcher.breakers[name].state],
                rate_limit_per_second=dispatcher.provider(name).rate_limit_per_second,
            )
            for name in page
        ]
        token = encode_page_token({"offset": start + size}) if start + size < len(names) else ""
        return C.ListConnectorsResponse(connectors=connectors, next_page_token=token)

    async def ReportEmailFeedback(self, request: C.ReportEmailFeedbackRequest, context: grpc.aio.ServicerContext) -> C.ReportEmailFeedbackResponse:
        current_principal()
        v = Violations()
        if not request.raw_message:
            v.add("raw_message", "raw_message is required: the report as received", "REQUIRED")
        elif len(request.raw_message) > MAX_REPORT:
            v.add("raw_message", f"raw_message must be at most {MAX_REPORT} bytes", "TOO_LONG")
        v.raise_if_any()
        if self._feedback is None:
            raise Unimplemented("this server takes no email feedback", reason="NOT_CONFIGURED")
        taken = await self._feedback.take(request.raw_message)
        if taken.report is None:
            return C.ReportEmailFeedbackResponse()
        return C.ReportEmailFeedbackResponse(kind=_FEEDBACK_KINDS[taken.report.kind], delivery_id=taken.delivery_id, detail=taken.report.detail)


    async def ReportProviderCallback(self, request: C.ReportProviderCallbackRequest,
                                     context: grpc.aio.ServicerContext) -> C.ReportProviderCallbackResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_identifier(v, "provider", request.provider)
        if len(request.headers) > _CALLBACK_HEADERS:
            v.add("headers", f"at most {_CALLBACK_HEADERS} headers", "TOO_MANY")
        elif any(len(k) > 256 or k != k.lower() or len(value) > _CALLBACK_HEADER_BYTES for k, value in request.headers.items()):
            v.add("headers", f"header names must be lower case and at most 256 characters, values at most {_CALLBACK_HEADER_BYTES}",
                  "INVALID")
        if len(request.body) > _CALLBACK_BODY:
            v.add("body", f"body must be at most {_CALLBACK_BODY} bytes", "TOO_LONG")
        v.raise_if_any()
        if self._callbacks is None:
            raise Unimplemented("this server takes no provider callbacks", reason="NOT_CONFIGURED")
        changed = await self._callbacks.take(tenant, provider=request.provider, headers=dict(request.headers), body=request.body)
        return C.ReportProviderCallbackResponse(delivery_ids=changed)


def _status_name(status: int) -> str:
    """The lower-case short name of a DeliveryStatus number, or "" for an unknown one."""
    if status not in messaging_pb2.DeliveryStatus.values():
        return ""
    return messaging_pb2.DeliveryStatus.Name(status).removeprefix("DELIVERY_STATUS_").lower()  # type: ignore[arg-type]


_FEEDBACK_KINDS = {
    FeedbackKind.HARD_BOUNCE: C.EMAIL_FEEDBACK_KIND_HARD_BOUNCE,
    FeedbackKind.SOFT_BOUNCE: C.EMAIL_FEEDBACK_KIND_SOFT_BOUNCE,
    FeedbackKind.COMPLAINT: C.EMAIL_FEEDBACK_KIND_COMPLAINT,
}
