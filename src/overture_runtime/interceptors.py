"""The server interceptors every Overture service runs, outermost first:

1. :class:`ObservabilityInterceptor`: request and trace ids, the OpenTelemetry
   server span, one canonical JSON log line per RPC (per successful RPC up to
   a rate, :class:`LogBudget`), Prometheus metrics.
2. :class:`ErrorInterceptor`: :class:`~overture_runtime.errors.OvertureError`
   becomes a ``google.rpc.Status`` with details; anything else becomes
   ``INTERNAL`` with a logged error id, and no traceback reaches the caller.
3. :class:`AuthInterceptor`: authenticates the bearer token and checks the
   role the method declares with the ``(overture.common.v1.required_role)``
   option, before the servicer runs (so permission is checked before
   existence). Then it decodes the request and runs the edge checks of
   :mod:`overture_runtime.edge` on it (so validation comes after permission).

Only ``/overture.*`` methods are intercepted; health and reflection stay open
for probes and stock tools. Only unary-response methods are supported.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import grpc
import structlog
from google.protobuf import descriptor_pool
from grpc_status import rpc_status
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import Counter, Histogram

from overture.common.v1 import auth_pb2

from .auth import TokenTable
from .clock import new_id
from .context import CallState, current_call, reset_call, set_call
from .db import schema_changed, storage_unavailable
from .edge import check_request
from .errors import InvalidArgument, OvertureError, PermissionDenied, Unavailable, to_rpc_status
from .privacy import mask_mapping
from .wire import Encoded

__all__ = ["AuthInterceptor", "ErrorInterceptor", "LogBudget", "ObservabilityInterceptor", "default_interceptors", "required_role"]

log = structlog.get_logger("overture.rpc")
tracer = trace.get_tracer("overture")

RPC_TOTAL = Counter("overture_rpc_requests_total", "RPCs served, by method and status code.", ["method", "code"])
RPC_SECONDS = Histogram(
    "overture_rpc_duration_seconds",
    "Time to serve an RPC.",
    ["method"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Around = Callable[[Callable[[], Awaitable[Any]], grpc.aio.ServicerContext], Awaitable[Any]]


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


def _identity(value: Any) -> Any:
    return value


def _checked_decoder(method: str, deserializer: Callable[[bytes], Any]) -> Callable[[Any], Any]:
    def decode(raw: Any) -> Any:
        if not isinstance(raw, bytes):
            request = raw
        else:
            try:
                request = deserializer(raw)
            except Exception:  # noqa: BLE001 - protobuf raises several types for bad input
                raise InvalidArgument(
                    f"the request is not a valid {method.rsplit('/', 1)[-1]} request message", reason="MALFORMED_REQUEST"
                ) from None
        # The edge checks: what no service can store or compute with is
        # answered here, once, with field violations (see edge.py).
        check_request(request)
        return request

    return decode


class _PassingEncoded:
    """A response serializer that passes a response the servicer encoded itself (:class:`~.wire.Encoded`) through as it is."""

    __slots__ = ("serializer",)

    def __init__(self, serializer: Callable[[Any], bytes]) -> None:
        self.serializer = serializer

    def __call__(self, response: Any) -> bytes:
        return response.data if isinstance(response, Encoded) else self.serializer(response)


def _encoding(serializer: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """*serializer*, passing encoded responses through; wrapped once, whatever the number of interceptors."""
    if serializer is None or isinstance(serializer, _PassingEncoded):
        return serializer
    return _PassingEncoded(serializer)


class _AroundInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps the behaviour of each intercepted unary-response method.

    grpc asks every interceptor for the handler of every call; the wrapped
    handler of a method is built once and kept, since a server's handlers are
    fixed once it starts. The outermost interceptor then answers from what it
    kept, and the chain below it is not asked again (asking it built three
    handlers and their closures per call)."""

    decodes_requests = False
    """Whether this interceptor decodes request bytes itself (see AuthInterceptor)."""

    def __init__(self) -> None:
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        wrapped = self._handlers.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None or not method.startswith("/overture."):
            return handler
        wrapped = self._handlers[method] = self._wrap(method, handler)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        deserializer = handler.request_deserializer
        if handler.unary_unary is not None:
            inner, factory = handler.unary_unary, grpc.unary_unary_rpc_method_handler
        elif handler.stream_unary is not None:
            inner, factory = handler.stream_unary, grpc.stream_unary_rpc_method_handler
        else:
            raise TypeError(f"{method}: response-streaming methods are not supported by the interceptors")
        decode: Callable[[Any], Any] = _identity
        if self.decodes_requests and handler.unary_unary is not None and deserializer is not None:
            # grpc answers an undecodable request with INTERNAL before any
            # interceptor runs; decoding here makes it INVALID_ARGUMENT.
            decode, deserializer = _checked_decoder(method, deserializer), _identity

        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return await self.around(method, lambda: inner(decode(request), context), context)

        return factory(behavior, request_deserializer=deserializer, response_serializer=_encoding(handler.response_serializer))

    async def around(
        self, method: str, call: Callable[[], Awaitable[Any]], context: grpc.aio.ServicerContext
    ) -> Any:
        raise NotImplementedError


class LogBudget:
    """Which successful calls of each method get their canonical log line: at
    most *per_second* a second, in bursts of as many (a token bucket per
    method; the methods are the server's, so the buckets are few). The calls
    left out are counted, and the next line of their method says how many
    (``unlogged``), so that counts read from the logs can be made whole; the
    metrics count every call. 0: every call is logged.

    At 1,000 calls a second, a line each was a tenth of the rules service's
    CPU per Evaluate (rendering and writing the JSON)."""

    def __init__(self, per_second: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = per_second
        self._clock = clock
        self._methods: dict[str, list[float]] = {}
        """Per method: [tokens, when they were counted, calls left out since its last line]."""

    def admit(self, method: str) -> int | None:
        """None when this call's line is left out; else how many calls of
        *method* were left out since its last line."""
        if not self._rate:
            return 0
        now = self._clock()
        state = self._methods.get(method)
        if state is None:
            state = self._methods[method] = [float(self._rate), now, 0]
        tokens = min(float(self._rate), state[0] + (now - state[1]) * self._rate)
        state[1] = now
        if tokens < 1:
            state[0], state[2] = tokens, state[2] + 1
            return None
        left_out = int(state[2])
        state[0], state[2] = tokens - 1, 0
        return left_out


class ObservabilityInterceptor(_AroundInterceptor):
    """Ids, tracing, the canonical log line and metrics of each RPC."""

    def __init__(self, budget: LogBudget | None = None) -> None:
        super().__init__()
        self._budget = budget or LogBudget(0)

    async def around(
        self, method: str, call: Callable[[], Awaitable[Any]], context: grpc.aio.ServicerContext
    ) -> Any:
        metadata = _metadata(context)
        state = CallState(method=method, request_id=metadata.get("x-request-id") or new_id(), metadata=metadata)
        token = set_call(state)
        # No header the propagators read, nothing to extract: the span starts a trace of its own.
        parent = propagate.extract(metadata) if not _trace_fields().isdisjoint(metadata) else None
        started = time.perf_counter()
        with tracer.start_as_current_span(method.lstrip("/"), context=parent, kind=SpanKind.SERVER) as span:
            trace_id = format(span.get_span_context().trace_id, "032x")
            structlog.contextvars.bind_contextvars(request_id=state.request_id, trace_id=trace_id, rpc=method)
            try:
                return await call()
            except BaseException:
                if state.code == grpc.StatusCode.OK:  # aborted by the servicer itself, or cancelled
                    state.code = _code_of(context)
                raise
            finally:
                elapsed = time.perf_counter() - started
                code = state.code.name
                span.set_attribute("rpc.grpc.status_code", state.code.value[0])
                if state.code != grpc.StatusCode.OK:
                    span.set_status(Status(StatusCode.ERROR, state.reason or code))
                _count(method, code, elapsed)
                left_out = 0 if state.code != grpc.StatusCode.OK else self._budget.admit(method)
                if left_out is not None:
                    fields: dict[str, Any] = {"code": code, "duration_ms": round(elapsed * 1000, 3)}
                    if state.principal is not None:
                        # Principals are operator-chosen names, which can be email addresses: masked like any.
                        fields.update(tenant=state.principal.tenant, principal=mask_mapping({"p": state.principal.name})["p"])
                    if state.reason:
                        fields["reason"] = state.reason
                    if state.error_id:
                        fields["error_id"] = state.error_id
                    if left_out:
                        fields["unlogged"] = left_out
                    log.info("rpc", **fields)
                structlog.contextvars.unbind_contextvars("request_id", "trace_id", "rpc", "tenant")
                reset_call(token)


_fields: tuple[object, frozenset[str]] = (None, frozenset())


def _trace_fields() -> frozenset[str]:
    """The headers the global propagators read (W3C ``traceparent`` and
    ``baggage`` by default), asked again only when the propagators change."""
    global _fields
    textmap = propagate.get_global_textmap()
    if _fields[0] is not textmap:
        _fields = (textmap, frozenset(textmap.fields))
    return _fields[1]


_counted: dict[tuple[str, str], tuple[Any, Any]] = {}


def _count(method: str, code: str, elapsed: float) -> None:
    """Count a call in the RPC metrics (their labelled children, looked up once per method and code)."""
    children = _counted.get((method, code))
    if children is None:
        children = _counted[(method, code)] = (RPC_TOTAL.labels(method, code), RPC_SECONDS.labels(method))
    children[0].inc()
    children[1].observe(elapsed)


def _code_of(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    return grpc.StatusCode.CANCELLED


class ErrorInterceptor(_AroundInterceptor):
    """Maps errors to rich statuses; hides bugs behind a logged id."""

    def __init__(self, *, domain: str) -> None:
        super().__init__()
        self._domain = domain

    async def around(
        self, method: str, call: Callable[[], Awaitable[Any]], context: grpc.aio.ServicerContext
    ) -> Any:
        state = current_call()
        try:
            return await call()
        except OvertureError as error:
            if state is not None:
                state.code, state.reason = error.code, error.reason
            status = rpc_status.to_status(to_rpc_status(error, domain=self._domain))
            await context.abort(status.code, status.details, status.trailing_metadata)
        except grpc.aio.AbortError:
            raise
        except NotImplementedError:  # a method of the generated base class nobody overrode
            if state is not None:
                state.code, state.reason = grpc.StatusCode.UNIMPLEMENTED, "UNIMPLEMENTED"
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented")
        except Exception as error:
            retry = _transient_storage_error(error)
            if retry is not None:
                log.warning("rpc.storage_unavailable", reason=retry.reason, error=type(error).__name__)
                if state is not None:
                    state.code, state.reason = retry.code, retry.reason
                status = rpc_status.to_status(to_rpc_status(retry, domain=self._domain))
                await context.abort(status.code, status.details, status.trailing_metadata)
            error_id = new_id()
            log.exception("rpc.unexpected_error", error_id=error_id)
            if state is not None:
                state.code, state.reason, state.error_id = grpc.StatusCode.INTERNAL, "INTERNAL", error_id
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error; reference {error_id}")


def _transient_storage_error(error: BaseException) -> Unavailable | None:
    """The UNAVAILABLE that *error* is, when a retry of the call can succeed:
    the database connection was lost or refused, or a migration changed a
    table under a cached statement."""
    if storage_unavailable(error):
        return Unavailable("the database cannot be reached right now; retry", reason="DATABASE_UNAVAILABLE",
                           retry_after=timedelta(milliseconds=250))
    if schema_changed(error):
        return Unavailable("the database schema changed under this call; retry", reason="SCHEMA_CHANGED",
                           retry_after=timedelta(milliseconds=100))
    return None


def required_role(method: str) -> str:
    """The role a method declares with ``(overture.common.v1.required_role)``."""
    service, _, name = method.lstrip("/").partition("/")
    descriptor = descriptor_pool.Default().FindServiceByName(service).FindMethodByName(name)
    role: str = descriptor.GetOptions().Extensions[auth_pb2.required_role]
    return role


class AuthInterceptor(_AroundInterceptor):
    """Authenticates the caller and checks the method's declared role. It
    also decodes the request, after authorization, so that malformed bytes
    are INVALID_ARGUMENT (and only for callers allowed to call at all)."""

    decodes_requests = True

    def __init__(self, tokens: TokenTable) -> None:
        super().__init__()
        self._tokens = tokens
        self._roles: dict[str, str] = {}

    async def around(
        self, method: str, call: Callable[[], Awaitable[Any]], context: grpc.aio.ServicerContext
    ) -> Any:
        role = self._roles.get(method)
        if role is None:
            role = self._roles[method] = required_role(method)
        state = current_call()
        principal = self._tokens.authenticate(state.metadata if state is not None and state.metadata is not None else _metadata(context))
        if state is not None:
            state.principal = principal
        structlog.contextvars.bind_contextvars(tenant=principal.tenant)
        if not role:  # fail closed: a method without a declared role is nobody's
            raise PermissionDenied(f"{method} declares no role", reason="NO_ROLE_DECLARED")
        self._tokens.authorize(principal, role)
        return await call()


def default_interceptors(
    *, tokens: TokenTable, domain: str, rpc_log_per_second: int = 0, clock: Callable[[], float] = time.monotonic,
) -> list[grpc.aio.ServerInterceptor]:
    """The interceptor chain of every Overture server, outermost first.
    *rpc_log_per_second* is :class:`LogBudget`'s (0: a line for every call)."""
    return [ObservabilityInterceptor(LogBudget(rpc_log_per_second, clock=clock)), ErrorInterceptor(domain=domain), AuthInterceptor(tokens)]
