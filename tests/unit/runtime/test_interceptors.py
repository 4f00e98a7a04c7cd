"""Unit tests of :mod:`overture_runtime.interceptors`, end to end through a real in-process grpc.aio server.

The server is bare (no health, no reflection): just the default interceptor
chain and a generated ConnectorService servicer whose ListConnectors does
what each test tells it to.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from overture.connectors.v1 import connector_service_pb2 as pb
from overture.connectors.v1 import connector_service_pb2_grpc as pb_grpc
from overture.connectors.v1 import delivery_pb2
from overture_runtime.auth import TENANT_HEADER, Principal, TokenTable
from overture_runtime.config import TokenGrant
from overture_runtime.context import CallState, current_call, current_principal
from overture_runtime.errors import FieldViolation, InvalidArgument, NotFound
from overture_runtime.interceptors import LogBudget, default_interceptors, required_role

DOMAIN = "test.overture.dev"
LIST_CONNECTORS = "/overture.connectors.v1.ConnectorService/ListConnectors"
ADMIN = "admin-token"
CONNECTOR_READER = "connector-reader-token"
RULES_READER = "rules-reader-token"
SERVICE = "service-token"
SECRET_TEXT = "db password is swordfish"

Behaviour = Callable[[pb.ListConnectorsRequest, grpc.aio.ServicerContext], Awaitable[pb.ListConnectorsResponse]]


async def _empty(request: pb.ListConnectorsRequest, context: grpc.aio.ServicerContext) -> pb.ListConnectorsResponse:
    return pb.ListConnectorsResponse()


class Connectors(pb_grpc.ConnectorServiceServicer):
    """A ConnectorService whose ListConnectors runs the test's behaviour and records each call."""

    def __init__(self) -> None:
        self.behaviour: Behaviour = _empty
        self.calls: list[pb.ListConnectorsRequest] = []

    async def ListConnectors(self, request: pb.ListConnectorsRequest, context: grpc.aio.ServicerContext) -> pb.ListConnectorsResponse:
        self.calls.append(request)
        return await self.behaviour(request, context)


@dataclass
class Served:
    """A running server, its servicer and a client."""

    servicer: Connectors
    channel: grpc.aio.Channel
    stub: pb_grpc.ConnectorServiceStub


def _echo_handler() -> grpc.GenericRpcHandler:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    return grpc.method_handlers_generic_handler("test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    """A bare grpc.aio server with the default interceptors and the test servicer, on a free port."""
    async with _serving() as running:
        yield running


@contextlib.asynccontextmanager
async def _serving(**interceptor_options: Any) -> AsyncIterator[Served]:
    tokens = TokenTable(
        [
            TokenGrant(token=ADMIN, tenant="acme", roles=("*",), principal="ops-admin"),  # type: ignore[arg-type]
            TokenGrant(token=CONNECTOR_READER, tenant="acme", roles=("connectors.read",), principal="dashboard"),  # type: ignore[arg-type]
            TokenGrant(token=RULES_READER, tenant="acme", roles=("rules.read",), principal="rules-viewer"),  # type: ignore[arg-type]
            TokenGrant(token=SERVICE, tenant="*", roles=("*",), principal="svc:test"),  # type: ignore[arg-type]
        ],
        extra_tenants=["globex"],
    )
    server = grpc.aio.server(interceptors=default_interceptors(tokens=tokens, domain=DOMAIN, **interceptor_options))
    servicer = Connectors()
    pb_grpc.add_ConnectorServiceServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((_echo_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    assert port
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Served(servicer, channel, pb_grpc.ConnectorServiceStub(channel))
    finally:
        await channel.close()
        await server.stop(None)


def _md(token: str | None = ADMIN, **extra: str) -> tuple[tuple[str, str], ...]:
    auth = (("authorization", f"Bearer {token}"),) if token is not None else ()
    return auth + tuple(extra.items())


async def _fail(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def _details(error: grpc.aio.AioRpcError) -> tuple[status_pb2.Status, error_details_pb2.ErrorInfo, error_details_pb2.BadRequest | None]:
    """The rich status of a failed call, with its ErrorInfo and BadRequest (if any)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    info, bad = None, None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
    assert info is not None
    return status, info, bad


def _rpc_lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == "rpc"]


async def _logged(logs: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The rpc lines once *count* of them are logged.

    A failed call's status reaches the client as soon as the server aborts,
    and the server logs its line just after, so the client waits for it.
    """
    async with asyncio.timeout(10):
        while len(_rpc_lines(logs)) < count:
            await asyncio.sleep(0.001)
    return _rpc_lines(logs)


def test_required_role_comes_from_the_proto_option() -> None:
    """required_role reads the (overture.common.v1.required_role) option of the method."""
    assert required_role(LIST_CONNECTORS) == "connectors.read"
    assert required_role("/overture.connectors.v1.ConnectorService/Send") == "deliveries.send"
    assert required_role("overture.connectors.v1.ConnectorService/GetDeliveryStatus") == "deliveries.read"


async def test_authorized_call_reaches_the_servicer(served: Served) -> None:
    """A caller with the role gets the servicer's response."""
    async def answer(request: pb.ListConnectorsRequest, context: grpc.aio.ServicerContext) -> pb.ListConnectorsResponse:
        return pb.ListConnectorsResponse(connectors=[delivery_pb2.Connector(name="smtp")], next_page_token=f"after-{request.page_size}")

    served.servicer.behaviour = answer
    response = await served.stub.ListConnectors(pb.ListConnectorsRequest(page_size=5), metadata=_md(CONNECTOR_READER))
    assert [c.name for c in response.connectors] == ["smtp"]
    assert response.next_page_token == "after-5"
    assert served.servicer.calls == [pb.ListConnectorsRequest(page_size=5)]


async def test_servicer_sees_the_principal_and_call_state(served: Served) -> None:
    """Inside the servicer, current_principal() is the authenticated caller and current_call() the call."""
    seen: list[tuple[Principal, CallState | None]] = []

    async def look(request: pb.ListConnectorsRequest, context: grpc.aio.ServicerContext) -> pb.ListConnectorsResponse:
        seen.append((current_principal(), current_call()))
        return pb.ListConnectorsResponse()

    served.servicer.behaviour = look
    await served.stub.ListConnectors(pb.ListConnectorsRequest(), metadata=_md(ADMIN, **{"x-request-id": "req-123"}))
    [(principal, state)] = seen
    assert principal == Principal(name="ops-admin", tenant="acme", roles=frozenset({"*"}))
    assert state is not None
    assert state.method == LIST_CONNECTORS
    assert state.request_id == "req-123"
    assert state.principal == principal


async def test_request_id_is_generated_when_not_sent(served: Served) -> None:
    """Without x-request-id, the call gets a generated request id."""
    ids: list[str] = []

    async def look(request: pb.ListConnectorsRequest, context: grpc.aio.ServicerContext) -> pb.ListConnectorsResponse:
        state = current_call()
        assert state is not None
        ids.append(state.request_id)
        return pb.ListConnectorsResponse()

    served.servicer.behaviour = look
    await served.stub.ListConnectors(pb.ListConnectorsRequest(), metadata=_md())
    await served.stub.ListConnectors(pb.ListConnectorsRequest(), metadata=_md())
    assert len(ids) == 2 and all(ids) and ids[0] != ids[1]


async def test_service_principal_acts_for_the_named_tenant(served: Served) -> None:
    """A service token acts for the tenant named in the x-overture-tenant header."""
    tenants: list[str] = []

    async def look(request: pb.ListConnectorsRequest, context: grpc.aio.ServicerContext) -> pb.ListConnectorsResponse:
        tenants.append(current_principal().tenant)
        return pb.ListConnectorsResponse()

    served.servicer.behaviour = look
    await served.stub.ListConnectors(pb.ListConnectorsRequest(), metadata=_md(SERVICE, **{TENANT_HEADER: "globex"}))
    assert tenants == ["globex"]


async def test_service_principal_without_tenant_is_invalid_argument(served: Served) -> None:
    """A service token without the tenant header is INVALID_ARGUMENT MISSING_TENANT, and the servicer does not run."""
    error = await _fail(served.stub.ListConnectors(pb.ListConnectorsRequest(), metadata=_md(SERVICE)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _details(error)[1].reason == "MISSING_TENANT"
    assert served.servicer.calls == []


async def test_no_token_is_unauthenticated(served: Served) -> None:
    """A call without a bearer token is UNAUTHENTICATED with reason MISSING_TOKEN, and the servicer does not run."""
    error = await _fail(served.stub.ListConnectors(pb.ListConnectorsRequest(), metadata=_md(None)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    status, info, _ = _details(error)
    assert (info.reason, info.domain) == ("MISSING_TOKEN", DOMAIN)
    assert status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert served.servicer.calls == []


async def test_unknown_token_is_unauthenticated(served: Served) -> None:
    """An unconfigured token is UNAUTHENTICATED with reason UNKNOWN_TOKEN."""
    error = await _fail(served.stub.ListConnectors(pb.ListConnectorsRequest(), metadata=_md("who-knows")))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _details(error)[1].reason == "UNKNOWN_TOKEN"
    assert "who-knows" not in (error.details() or "")


async def test_token_without_the_required_role_is_permission_denied(served: Served) -> None:
    """A token lacking connectors.read is PERMISSION_DENIED MISSING_ROLE naming the role, before the servicer runs."""
    error = await _fail(served.stub.ListConnectors(pb.ListConnectorsRequest(), metadata=_md(RULES_READER)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    _, info, _ = _details(error)
    assert info.reason == "MISSING_ROLE"
    assert dict(info.metadata) == {"role": "connectors.read"}
    assert served.servicer.calls == []


async def test_tenant_mismatch_is_permission_denied(served: Served) -> None:
    """A tenant token naming another tenant is PERMISSION_DENIED TENANT_MISMATCH."""
    error = await _fail(served.stub.ListConnectors(pb.ListConnectorsRequest(), metadata=_md(ADMIN, **{TENANT_HEADER: "globex"})))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _details(error)[1].reason == "TENANT_MISMATCH"


async def test_invalid_argument_carries_bad_request_details(served: Served) -> None:
    """An InvalidArgument raised by the servicer is INVALID_ARGUMENT with ErrorInfo and every field violation."""
    async def reject(request: pb.ListConnectorsRequest, context: grpc.aio.ServicerContext) -> pb.ListConnectorsResponse:
        raise InvalidArgument(
            "the request is invalid: page_size must be between 0 and 100",
            violations=[
                FieldViolation("page_size", "page_size must be between 0 and 100", "OUT_OF_RANGE"),
                FieldViolation("page_token", "page_token is not a token this service issued", "INVALID_PAGE_TOKEN"),
            ],
        )

    served.servicer.behaviour = reject
    error = await _fail(served.stub.ListConnectors(pb.ListConnectorsRequest(page_size=1000), metadata=_md()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "the request is invalid: page_size must be between 0 and 100"
    status, info, bad = _details(error)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert (info.reason, info.domain) == ("INVALID_ARGUMENT", DOMAIN)
    assert bad is not None
    assert [(v.field, v.reason) for v in bad.field_violations] == [("page_size", "OUT_OF_RANGE"), ("page_token", "INVALID_PAGE_TOKEN")]


async def test_other_overture_errors_keep_their_code_and_reason(served: Served) -> None:
    """Any OvertureError becomes its own status code with its reason."""
    async def missing(request: pb.ListConnectorsRequest, context: grpc.aio.ServicerContext) -> pb.ListConnectorsResponse:
        raise NotFound("no such connector", reason="CONNECTOR_NOT_FOUND")

    served.servicer.behaviour = missing
    error = await _fail(served.stub.ListConnectors(pb.ListConnectorsRequest(), metadata=_md()))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert _details(error)[1].reason == "CONNECTOR_NOT_FOUND"


async def test_unexpected_error_is_internal_with_a_reference_only(served: Served) -> None:
    """A plain exception becomes INTERNAL whose message gives a reference id, never the exception text."""
    async def crash(request: pb.ListConnectorsRequest, context: grpc.aio.ServicerContext) -> pb.ListConnectorsResponse:
        raise RuntimeError(SECRET_TEXT)

    served.servicer.behaviour = crash
    with capture_logs() as logs:
        error = await _fail(served.stub.ListConnectors(pb.ListConnectorsRequest(), metadata=_md()))
        [line] = await _logged(logs, 1)
    details = error.details() or ""
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "reference" in details
    assert SECRET_TEXT not in details and "RuntimeError" not in details and "Traceback" not in details
    [logged] = [entry for entry in logs if entry["event"] == "rpc.unexpected_error"]
    assert logged["log_level"] == "error"
    assert logged["error_id"] and logged["error_id"] in details
    assert (line["code"], line["reason"], line["error_id"]) == ("INTERNAL", "INTERNAL", logged["error_id"])


async def test_a_statement_invalidated_by_a_migration_is_unavailable_to_retry(served: Served) -> None:
    """asyncpg's InvalidCachedStatementError (a migration changed a table under a cached statement), as SQLAlchemy wraps it,
    is UNAVAILABLE with a retry delay, not INTERNAL: the driver has dropped its cache and a retry succeeds."""
    class InvalidCachedStatementError(Exception):
        pass

    class DBAPIError(Exception):
        def __init__(self, orig: BaseException) -> None:
            super().__init__("wrapped")
            self.orig = orig

    async def stale(request: pb.ListConnectorsRequest, context: grpc.aio.ServicerContext) -> pb.ListConnectorsResponse:
        raise DBAPIError(InvalidCachedStatementError("cached statement plan is invalid"))

    served.servicer.behaviour = stale
    error = await _fail(served.stub.ListConnectors(pb.ListConnectorsRequest(), metadata=_md()))
    status, info, _ = _details(error)
    assert error.code() == grpc.StatusCode.UNAVAILABLE and info.reason == "SCHEMA_CHANGED"
    assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)


async def test_servicer_abort_keeps_its_code(served: Served) -> None:
    """A servicer that aborts the call itself gets its own status through, and the log line records it."""
    async def abort(request: pb.ListConnectorsRequest, context: grpc.aio.ServicerContext) -> pb.ListConnectorsResponse:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not now")
        raise AssertionError("abort returned")

    served.servicer.behaviour = abort
    with capture_logs() as logs:
        error = await _fail(served.stub.ListConnectors(pb.ListConnectorsRequest(), metadata=_md()))
        lines = await _logged(logs, 1)
    assert (error.code(), error.details()) == (grpc.StatusCode.FAILED_PRECONDITION, "not now")
    assert [line["code"] for line in lines] == ["FAILED_PRECONDITION"]


async def test_malformed_request_bytes_are_invalid_argument(served: Served) -> None:
    """Request bytes that are not a valid message are INVALID_ARGUMENT MALFORMED_REQUEST for an authorized caller."""
    raw = served.channel.unary_unary(LIST_CONNECTORS)
    error = await _fail(raw(b"\xff", metadata=_md()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _details(error)[1].reason == "MALFORMED_REQUEST"
    assert served.servicer.calls == []


async def test_malformed_request_from_an_anonymous_caller_is_unauthenticated(served: Served) -> None:
    """Authentication runs before the request is decoded, so anonymous garbage is UNAUTHENTICATED."""
    raw = served.channel.unary_unary(LIST_CONNECTORS)
    error = await _fail(raw(b"\xff", metadata=_md(None)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_methods_outside_overture_are_not_intercepted(served: Served) -> None:
    """A method outside /overture.* needs no token and is not logged as an rpc."""
    echo = served.channel.unary_unary("/test.Echo/Echo")
    with capture_logs() as logs:
        assert await echo(b"ping") == b"ping"
    assert _rpc_lines(logs) == []


async def test_one_canonical_log_line_per_call(served: Served) -> None:
    """Each RPC logs exactly one 'rpc' line with its code, and the tenant once the caller is known."""
    async def reject(request: pb.ListConnectorsRequest, context: grpc.aio.ServicerContext) -> pb.ListConnectorsResponse:
        raise InvalidArgument("bad", violations=[FieldViolation("page_size", "bad")])

    with capture_logs() as logs:
        await served.stub.ListConnectors(pb.ListConnectorsRequest(), metadata=_md(CONNECTOR_READER))
        await _logged(logs, 1)
        await _fail(served.stub.ListConnectors(pb.ListConnectorsRequest(), metadata=_md(None)))
        await _logged(logs, 2)
        await _fail(served.stub.ListConnectors(pb.ListConnectorsRequest(), metadata=_md(RULES_READER)))
        await _logged(logs, 3)
        served.servicer.behaviour = reject
        await _fail(served.stub.ListConnectors(pb.ListConnectorsRequest(), metadata=_md(ADMIN)))
        lines = await _logged(logs, 4)
    assert len(_rpc_lines(logs)) == 4
    assert [(line["code"], line.get("tenant"), line.get("principal"), line.get("reason")) for line in lines] == [
        ("OK", "acme", "dashboard", None),
        ("UNAUTHENTICATED", None, None, "MISSING_TOKEN"),
        ("PERMISSION_DENIED", "acme", "rules-viewer", "MISSING_ROLE"),
        ("INVALID_ARGUMENT", "acme", "ops-admin", "INVALID_ARGUMENT"),
    ]
    assert all(line["log_level"] == "info" and line["duration_ms"] >= 0 for line in lines)
    assert all("error_id" not in line for line in lines)


def test_the_log_budget_admits_a_rate_per_method_and_counts_what_it_leaves_out() -> None:
    """Up to the rate a burst is logged; past it calls are left out and counted, and the method's next admitted line
    says how many; methods have budgets of their own; 0 logs every call."""
    now = [100.0]
    budget = LogBudget(3, clock=lambda: now[0])
    assert [budget.admit("/a") for _ in range(5)] == [0, 0, 0, None, None]
    assert budget.admit("/b") == 0
    now[0] += 0.5  # 1.5 calls' worth refilled
    assert [budget.admit("/a") for _ in range(2)] == [2, None]
    now[0] += 10  # refills to the burst size, not beyond
    assert [budget.admit("/a") for _ in range(4)] == [1, 0, 0, None]
    unlimited = LogBudget(0, clock=lambda: now[0])
    assert [unlimited.admit("/a") for _ in range(100)] == [0] * 100


async def test_successful_calls_past_the_budget_are_left_out_and_failures_are_always_logged() -> None:
    """With a budget of two lines a second, five good calls log two; a failed call past the budget is logged; a second
    later the next good call's line says how many were left out. The metrics count every call."""
    now = [0.0]
    async with _serving(rpc_log_per_second=2, clock=lambda: now[0]) as served:
        before = REGISTRY.get_sample_value("overture_rpc_requests_total", {"method": LIST_CONNECTORS, "code": "OK"}) or 0
        with capture_logs() as logs:
            for _ in range(5):
                await served.stub.ListConnectors(pb.ListConnectorsRequest(), metadata=_md(CONNECTOR_READER))
            await _fail(served.stub.ListConnectors(pb.ListConnectorsRequest(), metadata=_md(RULES_READER)))
            await _logged(logs, 3)
            now[0] += 1
            await served.stub.ListConnectors(pb.ListConnectorsRequest(), metadata=_md(CONNECTOR_READER))
            lines = await _logged(logs, 4)
        after = REGISTRY.get_sample_value("overture_rpc_requests_total", {"method": LIST_CONNECTORS, "code": "OK"})
    assert [(line["code"], line.get("unlogged")) for line in lines] == [("OK", None), ("OK", None), ("PERMISSION_DENIED", None), ("OK", 3)]
    assert after == before + 6


async def test_a_callers_trace_is_continued_and_a_call_without_one_starts_its_own(served: Served) -> None:
    """The server span joins the trace a traceparent header names; a later call without trace headers is not in it."""
    from opentelemetry import trace

    async def answer(request: pb.ListConnectorsRequest, context: grpc.aio.ServicerContext) -> pb.ListConnectorsResponse:
        return pb.ListConnectorsResponse(next_page_token=format(trace.get_current_span().get_span_context().trace_id, "032x"))

    served.servicer.behaviour = answer
    caller = "4bf92f3577b34da6a3ce929d0e0e4736"
    joined = await served.stub.ListConnectors(pb.ListConnectorsRequest(), metadata=_md(traceparent=f"00-{caller}-00f067aa0ba902b7-01"))
    assert joined.next_page_token == caller
    alone = await served.stub.ListConnectors(pb.ListConnectorsRequest(), metadata=_md())
    assert alone.next_page_token != caller


async def test_log_lines_never_carry_tokens(served: Served) -> None:
    """No bearer token, valid or not, appears in any log entry of a call."""
    with capture_logs() as logs:
        await served.stub.ListConnectors(pb.ListConnectorsRequest(), metadata=_md(ADMIN))
        await _fail(served.stub.ListConnectors(pb.ListConnectorsRequest(), metadata=_md("leaked-token-value")))
        await _logged(logs, 2)
    assert len(_rpc_lines(logs)) == 2
    assert ADMIN not in repr(logs) and "leaked-token-value" not in repr(logs)


async def test_calls_are_counted_by_method_and_code(served: Served) -> None:
    """Each RPC increments the request counter of its method and status code."""
    def count(code: str) -> float:
        return REGISTRY.get_sample_value("overture_rpc_requests_total", {"method": LIST_CONNECTORS, "code": code}) or 0.0

    ok, unauthenticated = count("OK"), count("UNAUTHENTICATED")
    with capture_logs() as logs:
        await served.stub.ListConnectors(pb.ListConnectorsRequest(), metadata=_md())
        await _fail(served.stub.ListConnectors(pb.ListConnectorsRequest(), metadata=_md(None)))
        await _logged(logs, 2)  # the counters are incremented just before the line is logged
    assert count("OK") == ok + 1
    assert count("UNAUTHENTICATED") == unauthenticated + 1
