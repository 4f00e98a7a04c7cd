"""Unit tests of :mod:`overture_runtime.edge`: the descriptor-driven checks every request and HTTP body gets."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overture.common.v1 import event_pb2
from overture.ingest.v1 import ingest_service_pb2
from overture.orchestrator.v1 import journey_pb2, orchestrator_service_pb2
from overture.rules.v1 import profile_service_pb2, rules_service_pb2
from overture_runtime import edge, limits
from overture_runtime.errors import InvalidArgument


def _reasons(request: Any) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        edge.check_request(request)
    return {v.field: v.reason for v in caught.value.violations}


def test_a_valid_request_passes() -> None:
    """A request within every limit passes the edge checks untouched."""
    request = rules_service_pb2.EvaluateRequest(rule_set="marketing-email", subject_id="alice")
    request.now.FromJsonString("2026-01-01T00:00:00Z")
    request.context.update({"plan": "pro", "revenue": 42.5, "tags": ["a", {"b": None}]})
    edge.check_request(request)


@pytest.mark.parametrize(("seconds", "nanos", "reason"), [
    (0, -1, "INVALID_TIMESTAMP"), (0, 1_000_000_000, "INVALID_TIMESTAMP"),
    (-62_135_596_801, 0, "INVALID_TIMESTAMP"), (253_402_300_800, 0, "INVALID_TIMESTAMP"), (2**62, 0, "INVALID_TIMESTAMP"),
    (253_402_300_799, 0, "OUT_OF_RANGE"),  # 9999-12-31T23:59:59Z: a Timestamp, but past 9000
    (-2_208_988_801, 0, "OUT_OF_RANGE"),  # 1899-12-31T23:59:59Z
])
def test_timestamps_out_of_range_name_their_field(seconds: int, nanos: int, reason: str) -> None:
    """A Timestamp that is not one (nanos or years out of range), or one outside 1900..9000, is a violation on its own field."""
    request = rules_service_pb2.EvaluateRequest(rule_set="r", subject_id="s")
    request.now.seconds, request.now.nanos = seconds, nanos
    assert _reasons(request) == {"now": reason}


@pytest.mark.parametrize(("seconds", "nanos", "reason"), [
    (2**63 - 1, 0, "OUT_OF_RANGE"), (-1, 0, "OUT_OF_RANGE"), (0, -5, "OUT_OF_RANGE"), (1, -5, "INVALID_DURATION"),
    (0, 1_000_000_000, "INVALID_DURATION"), (int(limits.DURATION_MAX.total_seconds()), 1, "OUT_OF_RANGE"),
])
def test_durations_that_overflow_or_go_negative_name_their_field(seconds: int, nanos: int, reason: str) -> None:
    """A Duration that overflows, is negative or mixes signs is a violation naming the nested field."""
    request = orchestrator_service_pb2.PublishJourneyRequest(name="welcome", reason="r")
    step = request.spec.steps.add(id="wait")
    step.delay.duration.seconds, step.delay.duration.nanos = seconds, nanos
    assert _reasons(request) == {"spec.steps[0].delay.duration": reason}


def test_the_longest_duration_is_accepted() -> None:
    """A Duration of exactly DURATION_MAX passes."""
    request = orchestrator_service_pb2.PublishJourneyRequest(name="welcome", reason="r")
    request.spec.steps.add(id="wait").delay.duration.FromTimedelta(limits.DURATION_MAX)
    edge.check_request(request)


@pytest.mark.parametrize(("seconds", "nanos"), [(-7 * 86_400, 0), (-1, -5), (0, -5), (-edge._DURATION_MAX, 0), (edge._DURATION_MAX, 0)])
def test_a_signed_duration_may_be_negative(seconds: int, nanos: int) -> None:
    """A Duration field marked signed (a trait date's offset: 7 days before `renewal_date`) passes from minus to plus DURATION_MAX."""
    request = orchestrator_service_pb2.PublishJourneyRequest(name="renewal", reason="r")
    offset = request.spec.steps.add(id="wait").delay.until_trait.offset
    offset.seconds, offset.nanos = seconds, nanos
    edge.check_request(request)


@pytest.mark.parametrize(("seconds", "nanos", "reason"), [
    (-edge._DURATION_MAX, -1, "OUT_OF_RANGE"), (-edge._DURATION_MAX - 1, 0, "OUT_OF_RANGE"), (-(2**63), 0, "OUT_OF_RANGE"),
    (-1, 5, "INVALID_DURATION"), (0, -1_000_000_000, "INVALID_DURATION"),
])
def test_a_signed_duration_is_bounded_both_ways(seconds: int, nanos: int, reason: str) -> None:
    """A signed Duration past minus DURATION_MAX, or with mixed signs, is still a violation at its field."""
    request = orchestrator_service_pb2.PublishJourneyRequest(name="renewal", reason="r")
    offset = request.spec.steps.add(id="wait").delay.until_trait.offset
    offset.seconds, offset.nanos = seconds, nanos
    assert _reasons(request) == {"spec.steps[0].delay.until_trait.offset": reason}


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_in_structs_name_their_path(number: float) -> None:
    """NaN or Infinity anywhere in a Struct is NOT_FINITE at its exact path."""
    request = rules_service_pb2.EvaluateRequest(rule_set="r", subject_id="s")
    request.context.update({"order": {"items": [1, {"price": number}]}})
    assert _reasons(request) == {"context.order.items[1].price": "NOT_FINITE"}


def test_nul_characters_are_refused_in_strings_struct_values_and_keys() -> None:
    """A NUL character cannot be stored by PostgreSQL: refused in plain strings, Struct values and Struct keys."""
    request = profile_service_pb2.UpsertProfileRequest(subject_id="a\x00b", timezone="UTC")
    request.traits.update({"name": "x\x00", "we\x00ird": 1})
    reasons = _reasons(request)
    assert reasons["subject_id"] == "INVALID_CHARACTERS"
    assert reasons["traits.name"] == "INVALID_CHARACTERS"
    assert reasons['traits["we\\u0000ird"]'] == "INVALID_CHARACTERS"


def test_text_longer_than_its_column_is_refused() -> None:
    """A 65-character timezone and a 300-character consent source exceed their limits."""
    assert _reasons(profile_service_pb2.UpsertProfileRequest(subject_id="s", timezone="x" * 65)) == {"timezone": "TOO_LONG"}
    assert _reasons(profile_service_pb2.SetConsentRequest(subject_id="s", source="y" * 300)) == {"source": "TOO_LONG"}


def test_unknown_enum_numbers_are_refused() -> None:
    """An enum set to a number its enum does not declare is UNKNOWN_ENUM_VALUE, with the valid names."""
    with pytest.raises(InvalidArgument) as caught:
        edge.check_request(rules_service_pb2.EvaluateRequest(rule_set="r", subject_id="s", channel=999))  # type: ignore[arg-type]
    (violation,) = caught.value.violations
    assert (violation.field, violation.reason) == ("channel", "UNKNOWN_ENUM_VALUE")
    assert "CHANNEL_EMAIL" in violation.description


def test_per_item_batch_fields_are_left_to_the_servicer() -> None:
    """Items of a per_item field are not checked by check_request, but item_violations finds their problems."""
    request = ingest_service_pb2.IngestEventsRequest()
    good, bad = request.events.add(event_type="a", subject_id="s"), request.events.add(event_type="a", subject_id="s")
    bad.attributes.update({"revenue": float("inf")})
    edge.check_request(request)
    assert edge.item_violations(good) == []
    assert [(v.field, v.reason) for v in edge.item_violations(bad)] == [("attributes.revenue", "NOT_FINITE")]


def test_evaluate_batch_and_profile_events_are_per_item() -> None:
    """EvaluateBatch and ApplyProfileEvents answer their items one by one as well."""
    batch = rules_service_pb2.EvaluateBatchRequest()
    batch.requests.add(rule_set="r", subject_id="s").context.update({"x": float("nan")})
    edge.check_request(batch)
    events = profile_service_pb2.ApplyProfileEventsRequest(events=[event_pb2.Event(subject_id="\x00")])
    edge.check_request(events)


def test_structs_nested_past_the_limit_are_too_deep() -> None:
    """A Struct nested deeper than STRUCT_DEPTH is TOO_DEEP, without recursing to the bottom."""
    value: Any = 1
    for _ in range(limits.STRUCT_DEPTH + 5):
        value = {"a": value}
    request = rules_service_pb2.EvaluateRequest(rule_set="r", subject_id="s")
    request.context.update(value)
    assert set(_reasons(request).values()) == {"TOO_DEEP"}


def test_map_entries_are_checked() -> None:
    """Keys and values of map fields are checked like any string."""
    request = orchestrator_service_pb2.PublishJourneyRequest(name="w", reason="r")
    step = request.spec.steps.add(id="s")
    step.send.CopyFrom(journey_pb2.SendStep(template="t"))
    request.spec.templates["bad\x00"].subject = "hello"
    assert any(r == "INVALID_CHARACTERS" for r in _reasons(request).values())


@pytest.mark.parametrize("body", [b"{", b"\xff", b"", b"[1,]"])
def test_loads_refuses_what_is_not_json(body: bytes) -> None:
    """A body that is not JSON is MALFORMED_JSON on the body."""
    with pytest.raises(InvalidArgument) as caught:
        edge.loads(body)
    assert [(v.field, v.reason) for v in caught.value.violations] == [("body", "MALFORMED_JSON")]


@pytest.mark.parametrize("depth", [limits.JSON_DEPTH + 1, 1_000, 100_000])
def test_loads_refuses_deep_nesting(depth: int) -> None:
    """JSON nested past JSON_DEPTH, even 100,000 levels, is TOO_DEEP rather than a RecursionError."""
    with pytest.raises(InvalidArgument) as caught:
        edge.loads(b"[" * depth + b"]" * depth)
    assert caught.value.reason == "TOO_DEEP"


@pytest.mark.parametrize(("text", "path"), [
    ('{"a": NaN}', "a"), ('{"a": Infinity}', "a"), ('{"a": -Infinity}', "a"), ('{"a": [1e999]}', "a[0]"),
    ('{"a": {"b": ' + "9" * 300 + "}}", "a.b"), ('{"a": 9223372036854775808}', "a"),
])
def test_numbers_no_double_holds_are_reported_at_their_path(text: str, path: str) -> None:
    """NaN, Infinity, 1e999 and huge integers parse to placeholders that json_violations names by path."""
    assert [(v.field, v.reason) for v in edge.json_violations(edge.loads(text))] == [(path, "NOT_FINITE")]


def test_json_violations_find_nul_and_surrogates() -> None:
    """NUL characters and lone surrogates, in keys or values, are reported under the given prefix."""
    value = json.loads('{"a": "x\\u0000", "b\\u0000": 1, "c": ["\\ud800"]}')
    found = {(v.field, v.reason) for v in edge.json_violations(value, "events[2]")}
    assert found == {("events[2].a", "INVALID_CHARACTERS"), ('events[2]["b\\u0000"]', "INVALID_CHARACTERS"),
                     ("events[2].c[0]", "INVALID_CHARACTERS")}


def test_ordinary_json_passes() -> None:
    """Ordinary JSON, with big-but-exact integers and nulls, has no violations."""
    value = edge.loads(b'{"n": 9223372036854775807, "f": 1.5e300, "s": "ok", "l": [null, true, {"x": []}]}')
    assert edge.json_violations(value) == []
    assert value["n"] == 2**63 - 1


def test_struct_values_must_be_finite_even_in_lists() -> None:
    """A bare ListValue item that is NaN is found too."""
    request = rules_service_pb2.EvaluateRequest(rule_set="r", subject_id="s")
    request.context.fields["l"].list_value.values.add().number_value = float("nan")
    assert _reasons(request) == {"context.l[0]": "NOT_FINITE"}


def _request_types() -> list[Any]:
    """Every request and response message type of Overture's RPCs, and the batch items."""
    import overture
    from tests.fuzzing import rpc_methods

    types: dict[str, Any] = {}
    for method in rpc_methods(overture):
        for descriptor in (method.descriptor.input_type, method.descriptor.output_type):
            types[descriptor.full_name] = descriptor
    return [types[name] for name in sorted(types)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_the_fast_walk_and_the_named_violations_agree(data: st.DataObject) -> None:
    """For hostile, plausible and one-field-mutated messages of every request type, the fast check passes exactly those in which the full walk finds no violation."""
    from tests.fuzzing import hostile_messages, mutated_messages, plausible_messages

    descriptor = data.draw(st.sampled_from(_request_types()))
    message = data.draw(st.one_of(hostile_messages(descriptor), plausible_messages(descriptor),
                                  mutated_messages(descriptor).map(lambda pair: pair[1])))
    for skip_items in (True, False):
        assert edge._ok(message, skip_items, 0) == (not list(edge._message(message, "", skip_items=skip_items)))


@pytest.mark.parametrize("seconds", [edge._TS_MIN - 1, edge._TS_MIN, edge._TS_MAX - 1, edge._TS_MAX, edge._TS_MAX + 1])
@pytest.mark.parametrize("nanos", [-1, 0, 999_999_999, 1_000_000_000])
def test_the_fast_walk_agrees_at_the_timestamp_limits(seconds: int, nanos: int) -> None:
    """At and around the first and last admitted instants, the fast check and the full walk agree."""
    request = rules_service_pb2.EvaluateRequest(rule_set="r", subject_id="s")
    request.now.seconds, request.now.nanos = seconds, nanos
    assert edge._ok(request, True, 0) == (not list(edge._message(request, "", skip_items=True)))


@pytest.mark.parametrize("seconds", [-1, 0, edge._DURATION_MAX - 1, edge._DURATION_MAX, edge._DURATION_MAX + 1])
@pytest.mark.parametrize("nanos", [-1, 0, 1, 999_999_999, 1_000_000_000])
def test_the_fast_walk_agrees_at_the_duration_limits(seconds: int, nanos: int) -> None:
    """At and around zero and the longest admitted Duration, the fast check and the full walk agree."""
    request = orchestrator_service_pb2.PublishJourneyRequest(name="welcome", reason="r")
    step = request.spec.steps.add(id="wait")
    step.delay.duration.seconds, step.delay.duration.nanos = seconds, nanos
    assert edge._ok(request, True, 0) == (not list(edge._message(request, "", skip_items=True)))


@pytest.mark.parametrize("length", [0, 1, 255, 256, 257])
@pytest.mark.parametrize("text", ["a", "é", "😀", "\x00"])
def test_the_fast_walk_agrees_on_string_limits(length: int, text: str) -> None:
    """Around an id's length limit, with ASCII, other Unicode, astral characters or NUL, the fast check and the full walk agree."""
    request = rules_service_pb2.EvaluateRequest(rule_set="r", subject_id=(text * length)[:length])
    assert edge._ok(request, True, 0) == (not list(edge._message(request, "", skip_items=True)))


@pytest.mark.parametrize("seconds", [-edge._DURATION_MAX - 1, -edge._DURATION_MAX, -1, 0, edge._DURATION_MAX, edge._DURATION_MAX + 1])
@pytest.mark.parametrize("nanos", [-1_000_000_000, -1, 0, 1, 1_000_000_000])
def test_the_fast_walk_agrees_at_the_signed_duration_limits(seconds: int, nanos: int) -> None:
    """Around both ends of a signed Duration, the fast check and the full walk agree."""
    request = orchestrator_service_pb2.PublishJourneyRequest(name="renewal", reason="r")
    offset = request.spec.steps.add(id="wait").delay.until_trait.offset
    offset.seconds, offset.nanos = seconds, nanos
    assert edge._ok(request, True, 0) == (not list(edge._message(request, "", skip_items=True)))
