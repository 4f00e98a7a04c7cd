"""Fuzzing ingest's doors (hypothesis): whatever arrives, the answer is a
clear 2xx/4xx or OK/INVALID_ARGUMENT, never a 500 or INTERNAL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overture.common.v1 import event_pb2
from overture.ingest.v1 import ingest_service_pb2 as I
from overture.ingest.v1 import ingest_service_pb2_grpc
from overture_ingest import IngestApp
from overture_runtime.config import Settings
from overture_runtime.testing import serving
from tests.conftest import ADMIN_TOKEN, admin_metadata

MD = admin_metadata()
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)
event_like = st.fixed_dictionaries({}, optional={
    "event_type": json_values | st.sampled_from(["user.signed_up", "a.b", "", "X"]),
    "subject_id": json_values | st.sampled_from(["s1", "", "x" * 300]),
    "event_id": json_values, "occurred_at": json_values | st.sampled_from(["2026-01-01T00:00:00Z", "yesterday", "2999-01-01T00:00:00Z"]),
    "attributes": json_values, "userId": json_values, "event": json_values, "type": json_values, "messageId": json_values,
    "properties": json_values, "traits": json_values, "timestamp": json_values,
    "specversion": st.sampled_from(["1.0", "0.3"]), "id": json_values, "source": json_values, "subject": json_values, "data": json_values,
})


@pytest.fixture
async def ingest(make_settings: Callable[..., Settings]) -> AsyncIterator[tuple[str, str]]:
    settings_ = make_settings(ingest_http_port=0, rules_address="127.0.0.1:1", orchestrator_address="127.0.0.1:1")
    app = IngestApp(settings_)
    async with serving(app, settings_) as address:
        yield address, f"http://127.0.0.1:{app.http_port}"


@FUZZ
@given(path=st.sampled_from(["/automation/events", "/v1/track", "/v1/identify", "/v1/batch", "/cloudevents"]),
       body=st.one_of(event_like, st.fixed_dictionaries({"events": st.lists(event_like, max_size=4)}),
                      st.fixed_dictionaries({"batch": st.lists(event_like, max_size=4)}), st.lists(event_like, max_size=3), json_values),
       content_type=st.sampled_from(["application/json", "application/cloudevents+json", "application/cloudevents-batch+json", "text/plain"]),
       raw=st.booleans(), garbage=st.binary(max_size=64))
async def test_http_never_answers_500(ingest: tuple[str, str], path: str, body: Any, content_type: str, raw: bool, garbage: bytes) -> None:
    """Any JSON (or garbage) body on any HTTP door gets a 2xx or 4xx answer with a JSON body."""
    content = garbage if raw else json.dumps(body).encode()
    async with httpx.AsyncClient(base_url=ingest[1], headers={"authorization": f"Bearer {ADMIN_TOKEN}", "content-type": content_type}) as http:
        response = await http.post(path, content=content)
    assert response.status_code < 500, response.text
    response.json()


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    try:
        result.update(value)
    except (ValueError, TypeError):
        pass
    return result


@FUZZ
@given(events=st.lists(st.builds(
    lambda t, s, i, attrs, seconds, depth: (t, s, i, attrs, seconds, depth),
    st.text(max_size=40), st.text(max_size=300), st.text(max_size=300),
    st.dictionaries(st.text(max_size=10), json_values, max_size=6), st.integers(-(2**40), 2**40), st.integers(-5, 5),
), min_size=1, max_size=20))
async def test_grpc_never_answers_internal(ingest: tuple[str, str], events: list[tuple[Any, ...]]) -> None:
    """Any field values in IngestEvents get per-event results or INVALID_ARGUMENT, never INTERNAL."""
    batch = []
    for event_type, subject, event_id, attributes, seconds, depth in events:
        event = event_pb2.Event(event_type=event_type, subject_id=subject, event_id=event_id, attributes=_struct(attributes))
        event.occurred_at.seconds = seconds
        event.causation.depth = depth
        batch.append(event)
    async with grpc.aio.insecure_channel(ingest[0]) as channel:
        try:
            reply = await ingest_service_pb2_grpc.IngestServiceStub(channel).IngestEvents(I.IngestEventsRequest(events=batch), metadata=MD)
        except grpc.aio.AioRpcError as error:
            assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), error.details()
            return
    assert len(reply.results) == len(batch)
    for result in reply.results:
        assert result.status != I.EVENT_RESULT_STATUS_UNSPECIFIED
        if result.status == I.EVENT_RESULT_STATUS_REJECTED:
            assert result.violations and all(v.field and v.description for v in result.violations)


@FUZZ
@given(garbage=st.binary(max_size=200))
async def test_grpc_garbage_bytes_are_invalid_argument(ingest: tuple[str, str], garbage: bytes) -> None:
    """Bytes that may not even be a protobuf are answered OK or INVALID_ARGUMENT, never INTERNAL."""
    async with grpc.aio.insecure_channel(ingest[0]) as channel:
        raw = channel.unary_unary("/overture.ingest.v1.IngestService/IngestEvents", request_serializer=lambda b: b, response_deserializer=lambda b: b)
        try:
            await raw(garbage, metadata=MD)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
