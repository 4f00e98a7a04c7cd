"""In-doubt deliveries on real PostgreSQL, SMTP and the rules service's audit log: listed for
operators, settled by them (audited, reported, never sent), and every bad request refused."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
import sqlalchemy as sa

from overture.common.v1 import messaging_pb2
from overture.connectors.v1 import connector_service_pb2 as C
from overture.rules.v1 import audit_event_pb2, rules_service_pb2, rules_service_pb2_grpc
from overture_connectors.tables import status_outbox
from overture_rules import RulesApp
from overture_runtime.config import Settings
from overture_runtime.testing import serving
from tests.conftest import READER_TOKEN, admin_metadata

from .connectors_support import CountingSink, connectors_service, email
from .test_bad_input import _error

S = messaging_pb2
AUTH = admin_metadata()


async def test_an_operator_lists_and_resolves_an_in_doubt_delivery_and_the_log_records_who_and_why(
        make_settings: Callable[..., Settings]) -> None:
    """A lost SMTP reply leaves one delivery IN_DOUBT; ListDeliveries(IN_DOUBT) shows only it; ResolveDelivery settles it as SENT
    without sending anything, the audit log holds the resolution with the operator and reason, and a status report waits for the orchestrator."""
    base = make_settings()
    async with serving(RulesApp(base), base) as rules_address, grpc.aio.insecure_channel(rules_address) as rules_channel:
        with CountingSink() as sink:
            sink.drop_after_data.add("run-1:send")
            async with connectors_service(make_settings, sink, rules_address=rules_address) as service:
                stub = service.stub
                await stub.SendBatch(C.SendBatchRequest(messages=[email(f"run-{i}:send") for i in range(3)]), metadata=AUTH)
                listed = await stub.ListDeliveries(C.ListDeliveriesRequest(status=S.DELIVERY_STATUS_IN_DOUBT), metadata=AUTH)
                everything = await stub.ListDeliveries(C.ListDeliveriesRequest(page_size=2), metadata=AUTH)
                rest = await stub.ListDeliveries(C.ListDeliveriesRequest(page_size=2, page_token=everything.next_page_token), metadata=AUTH)
                request = C.ResolveDeliveryRequest(idempotency_key="run-1:send", resolution=S.DELIVERY_STATUS_SENT,
                                                   reason="the relay's log shows it queued", request_id="resolve-1")
                resolved = await stub.ResolveDelivery(request, metadata=AUTH)
                repeat = await stub.ResolveDelivery(request, metadata=AUTH)
                again = await _error(stub.ResolveDelivery(C.ResolveDeliveryRequest(
                    idempotency_key="run-1:send", resolution=S.DELIVERY_STATUS_FAILED, reason="changed my mind"), metadata=AUTH))
                after = await stub.ListDeliveries(C.ListDeliveriesRequest(status=S.DELIVERY_STATUS_IN_DOUBT), metadata=AUTH)
                async with service.app.db.connect() as conn:
                    reports = (await conn.execute(sa.select(status_outbox))).all()
        log = await rules_service_pb2_grpc.RulesServiceStub(rules_channel).ListAuditEvents(
            rules_service_pb2.ListAuditEventsRequest(page_size=100), metadata=AUTH)
    assert [d.idempotency_key for d in listed.deliveries] == ["run-1:send"]
    assert len(everything.deliveries) == 2 and len(rest.deliveries) == 1 and not rest.next_page_token
    assert [d.delivery_id for d in [*everything.deliveries, *rest.deliveries]] == sorted(
        [d.delivery_id for d in [*everything.deliveries, *rest.deliveries]], reverse=True)
    assert resolved.delivery.status == S.DELIVERY_STATUS_SENT and repeat == resolved
    assert (again[0], again[3]) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_IN_DOUBT")
    assert not after.deliveries
    assert sink.keys.count("run-1:send") == 1
    entries = [e for e in log.audit_events if e.action == audit_event_pb2.AUDIT_ACTION_DELIVERY_RESOLVED]
    assert [(e.actor, e.reason, e.target) for e in entries] == [("alice@acme", "the relay's log shows it queued",
                                                                  f"delivery:{resolved.delivery.delivery_id}")]
    assert [(r.idempotency_key, r.status) for r in reports] == [("run-1:send", "sent")]


@pytest.mark.parametrize(("request_fields", "field"), [
    ({"resolution": S.DELIVERY_STATUS_SENT, "reason": "x"}, "idempotency_key"),
    ({"idempotency_key": "k", "reason": "x"}, "resolution"),
    ({"idempotency_key": "k", "resolution": S.DELIVERY_STATUS_BOUNCED, "reason": "x"}, "resolution"),
    ({"idempotency_key": "k", "resolution": 99, "reason": "x"}, "resolution"),
    ({"idempotency_key": "k", "resolution": S.DELIVERY_STATUS_SENT}, "reason"),
    ({"idempotency_key": "k", "resolution": S.DELIVERY_STATUS_SENT, "reason": "x" * 1025}, "reason"),
    ({"idempotency_key": "k\x00", "resolution": S.DELIVERY_STATUS_SENT, "reason": "x"}, "idempotency_key"),
    ({"idempotency_key": "k", "resolution": S.DELIVERY_STATUS_SENT, "reason": "x", "request_id": "r" * 300}, "request_id"),
])
async def test_a_bad_resolution_request_is_invalid_argument_naming_the_field(
        make_settings: Callable[..., Settings], request_fields: dict[str, object], field: str) -> None:
    """Each malformed ResolveDelivery is INVALID_ARGUMENT with a field violation on the offending field."""
    with CountingSink() as sink:
        async with connectors_service(make_settings, sink) as service:
            code, _, violations, _ = await _error(service.stub.ResolveDelivery(C.ResolveDeliveryRequest(**request_fields), metadata=AUTH))  # type: ignore[arg-type]
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations


async def test_resolving_needs_its_own_role_an_unknown_key_is_not_found_and_only_in_doubt_can_be_filtered(
        make_settings: Callable[..., Settings]) -> None:
    """A reader gets PERMISSION_DENIED, an unknown key NOT_FOUND, and a ListDeliveries filter on SENT is INVALID_ARGUMENT."""
    with CountingSink() as sink:
        async with connectors_service(make_settings, sink) as service:
            request = C.ResolveDeliveryRequest(idempotency_key="nope", resolution=S.DELIVERY_STATUS_FAILED, reason="x")
            codes = []
            for metadata in (admin_metadata(READER_TOKEN), AUTH):
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await service.stub.ResolveDelivery(request, metadata=metadata)
                codes.append(raised.value.code())
            with pytest.raises(grpc.aio.AioRpcError) as filtered:
                await service.stub.ListDeliveries(C.ListDeliveriesRequest(status=S.DELIVERY_STATUS_SENT), metadata=AUTH)
    assert codes == [grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND]
    assert filtered.value.code() == grpc.StatusCode.INVALID_ARGUMENT
