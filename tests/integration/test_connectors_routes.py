"""Rate limits, circuit breakers and fallback routes on real PostgreSQL, Redis and SMTP servers:
the bucket is shared by replicas, a failing relay's circuit opens and the route fails over to the
backup, and the primary comes back through half-open."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Callable

from prometheus_client import REGISTRY

from overture.common.v1 import messaging_pb2
from overture.connectors.v1 import connector_service_pb2 as C
from overture.connectors.v1 import delivery_pb2
from overture_runtime.clock import ManualClock
from overture_runtime.config import Settings
from tests.conftest import admin_metadata

from .connectors_support import CountingSink, connectors_service, email

S = messaging_pb2
AUTH = admin_metadata()


async def circuits(stub: object) -> dict[str, int]:
    """Each provider's circuit state, as ListConnectors answers it."""
    response = await stub.ListConnectors(C.ListConnectorsRequest(), metadata=AUTH)  # type: ignore[attr-defined]
    return {c.name: c.circuit_state for c in response.connectors}


async def test_replicas_share_one_token_bucket_and_sends_over_it_are_retried_not_dropped(make_settings: Callable[..., Settings]) -> None:
    """Two replicas sending 30 messages through a provider limited to burst 10 at 5/s send exactly 10; the rest are answered
    RATE_LIMITED with a delay and nothing sent, and a second later 5 more go out, each key once."""
    clock = ManualClock()
    providers = json.dumps([{"name": "smtp", "kind": "smtp", "rate_limit_per_second": 5, "burst": 10, "max_wait_seconds": 0}])
    with CountingSink() as sink:
        async with connectors_service(make_settings, sink, clock=clock, connector_providers=providers) as one, \
                connectors_service(make_settings, sink, clock=clock, connector_providers=providers) as two:
            messages = [email(f"run-{i}:send") for i in range(30)]
            first = [await one.stub.SendBatch(C.SendBatchRequest(messages=messages[:15]), metadata=AUTH),
                     await two.stub.SendBatch(C.SendBatchRequest(messages=messages[15:]), metadata=AUTH)]
            results = [r for response in first for r in response.results]
            limited = [m for m, r in zip(messages, results, strict=True) if r.HasField("error")]
            clock.advance(dt.timedelta(seconds=1))
            again = await two.stub.SendBatch(C.SendBatchRequest(messages=limited), metadata=AUTH)
    assert len(sink.keys) == 15 and len(set(sink.keys)) == 15
    assert len(limited) == 20
    assert {(r.error.reason, r.delivery.status) for r in results if r.HasField("error")} == {("RATE_LIMITED", S.DELIVERY_STATUS_FAILED)}
    assert all(r.error.retry_delay.ToTimedelta() > dt.timedelta(0) for r in results if r.HasField("error"))
    assert Counter(r.delivery.status for r in again.results) == Counter({S.DELIVERY_STATUS_SENT: 5, S.DELIVERY_STATUS_FAILED: 15})


async def test_a_failing_relay_opens_its_circuit_fails_over_and_recovers_through_half_open(make_settings: Callable[..., Settings]) -> None:
    """With the primary relay down, sends fail over to the backup; after 3 failures its circuit is OPEN (ListConnectors and the gauge)
    and it is not even tried; 30 s later it is HALF_OPEN, a trial send reaches it, and the circuit closes."""
    clock = ManualClock()
    primary, backup = CountingSink(), CountingSink()
    providers = json.dumps([
        {"name": "relay-a", "kind": "smtp", "settings": {"port": primary.port}, "breaker": {"failure_threshold": 3, "open_seconds": 30}},
        {"name": "relay-b", "kind": "smtp", "settings": {"port": backup.port}},
    ])
    with backup:
        async with connectors_service(make_settings, backup, clock=clock, connector_providers=providers,
                                      connector_routes='{"email": ["relay-a", "relay-b"]}') as service:
            stub = service.stub
            failed_over = [(await stub.Send(C.SendRequest(message=email(f"down-{i}:send")), metadata=AUTH)).delivery for i in range(3)]
            open_state = await circuits(stub)
            gauge_open = REGISTRY.get_sample_value("overture_connector_circuit_state", {"connector": "relay-a"})
            primary.start()
            try:
                skipped = (await stub.Send(C.SendRequest(message=email("open:send")), metadata=AUTH)).delivery
                clock.advance(dt.timedelta(seconds=30))
                half_open = await circuits(stub)
                trial = (await stub.Send(C.SendRequest(message=email("trial:send")), metadata=AUTH)).delivery
                closed = await circuits(stub)
            finally:
                primary.stop()
    assert {(d.connector, d.status, d.attempts) for d in failed_over} == {("relay-b", S.DELIVERY_STATUS_SENT, 2)}
    assert open_state == {"relay-a": delivery_pb2.CIRCUIT_STATE_OPEN, "relay-b": delivery_pb2.CIRCUIT_STATE_CLOSED}
    assert gauge_open == 1
    assert (skipped.connector, skipped.attempts) == ("relay-b", 1)
    assert half_open["relay-a"] == delivery_pb2.CIRCUIT_STATE_HALF_OPEN
    assert (trial.connector, trial.status) == ("relay-a", S.DELIVERY_STATUS_SENT)
    assert closed["relay-a"] == delivery_pb2.CIRCUIT_STATE_CLOSED
    assert primary.keys == ["trial:send"]
    assert sorted(backup.keys) == ["down-0:send", "down-1:send", "down-2:send", "open:send"]
