"""Unit tests of :mod:`overture_ingest.normalize`: validating and normalizing one event."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overture.common.v1 import event_pb2
from overture_ingest.normalize import EVENT_TYPE, PROFILE_EVENT_TYPES, Limits, NormalizedEvent, normalize, partition_of
from overture_runtime.errors import FieldViolation
from overture_runtime.protojson import struct_from_dict

RECEIVED = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)


def event(event_type: str = "user.signed_up", subject_id: str = "u-1", *, occurred: dt.datetime | None = None,
          attributes: dict[str, Any] | None = None, **fields: Any) -> event_pb2.Event:
    """An event with the given fields."""
    result = event_pb2.Event(event_type=event_type, subject_id=subject_id, **fields)
    if occurred is not None:
        result.occurred_at.FromDatetime(occurred)
    if attributes is not None:
        result.attributes.CopyFrom(struct_from_dict(attributes))
    return result


def run(e: event_pb2.Event, *, received_at: dt.datetime = RECEIVED, **kwargs: Any) -> NormalizedEvent | list[FieldViolation]:
    """normalize *e* for tenant acme from the grpc door over 8 partitions."""
    return normalize("acme", e, received_at=received_at, source="grpc", partitions=8, **kwargs)


def accepted(e: event_pb2.Event, **kwargs: Any) -> NormalizedEvent:
    """normalize *e*, expecting it to be valid."""
    result = run(e, **kwargs)
    assert isinstance(result, NormalizedEvent), result
    return result


def rejected(e: event_pb2.Event, **kwargs: Any) -> set[tuple[str, str]]:
    """normalize *e*, expecting violations; return their (field, reason) pairs."""
    result = run(e, **kwargs)
    assert isinstance(result, list), result
    assert result
    return {(v.field, v.reason) for v in result}


def nested(depth: int) -> dict[str, Any]:
    """A dict nested *depth* levels deep."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


# --- valid events ------------------------------------------------------------


def test_valid_event_is_normalized() -> None:
    """A valid event keeps its content and gets received_at, source, occurred_at and a partition stamped."""
    occurred = RECEIVED - dt.timedelta(minutes=5)
    result = accepted(event(occurred=occurred, attributes={"plan": "pro"}, event_id="e-1"))
    e = result.event
    assert (e.event_type, e.subject_id, e.event_id) == ("user.signed_up", "u-1", "e-1")
    assert e.occurred_at.ToDatetime(tzinfo=dt.UTC) == occurred
    assert e.received_at.ToDatetime(tzinfo=dt.UTC) == RECEIVED
    assert e.source == "grpc"
    assert e.id_derived is False
    assert dict(e.attributes) == {"plan": "pro"}
    assert result.original_event_type == "user.signed_up"
    assert result.partition == partition_of("acme", "u-1", 8)


def test_input_event_is_not_modified() -> None:
    """normalize returns a new event and leaves the caller's message alone."""
    e = event()
    before = e.SerializeToString(deterministic=True)
    accepted(e)
    assert e.SerializeToString(deterministic=True) == before


def test_missing_occurred_at_defaults_to_received_at() -> None:
    """An event without occurred_at is stamped as having occurred when it was received."""
    assert accepted(event()).event.occurred_at.ToDatetime(tzinfo=dt.UTC) == RECEIVED


def test_sender_source_is_kept_and_limited() -> None:
    """A source given by the sender wins over the door's; one longer than 64 characters rejects the event."""
    assert accepted(event(source="segment")).event.source == "segment"
    result = run(event(source="s" * 65))
    assert isinstance(result, list) and [(v.field, v.reason) for v in result] == [("source", "TOO_LONG")]


@pytest.mark.parametrize("event_type", ["identify", "user.signed_up", "a.b.c.d.e.f.g.h", "order_2.paid"])
def test_valid_event_types(event_type: str) -> None:
    """Lower-case dot-separated words of letters, digits and underscores, up to eight parts, are valid."""
    accepted(event(event_type))


def test_profile_event_types_are_valid_event_types() -> None:
    """Every event type that updates profiles is itself a valid event type."""
    for t in PROFILE_EVENT_TYPES:
        assert EVENT_TYPE.fullmatch(t)


# --- rejections --------------------------------------------------------------


def test_missing_event_type_and_subject_are_required() -> None:
    """An event without event_type or subject_id is REQUIRED at both, reported together."""
    assert rejected(event("", "")) == {("event_type", "REQUIRED"), ("subject_id", "REQUIRED")}


@pytest.mark.parametrize(
    "event_type",
    ["User.SignedUp", "user signed up", "user..signed_up", ".user", "user.", "1user", "user.1signed", "a.b.c.d.e.f.g.h.i", "user-signed-up"],
)
def test_bad_event_type_pattern_is_rejected(event_type: str) -> None:
    """An event type that is not lower-case dot-separated words is INVALID_EVENT_TYPE."""
    assert rejected(event(event_type)) == {("event_type", "INVALID_EVENT_TYPE")}


def test_event_type_longer_than_its_column_is_too_long() -> None:
    """An event type over 128 characters is TOO_LONG (the edge limit of every event_type field)."""
    assert rejected(event("x" * 129)) == {("event_type", "TOO_LONG")}


def test_subject_id_limits() -> None:
    """A subject id over 256 characters is TOO_LONG and one with control characters is INVALID_CHARACTERS."""
    assert rejected(event(subject_id="x" * 257)) == {("subject_id", "TOO_LONG")}
    assert rejected(event(subject_id="a\nb")) == {("subject_id", "INVALID_CHARACTERS")}
    accepted(event(subject_id="x" * 256))


def test_event_id_is_optional_but_checked() -> None:
    """A given event_id must be a valid identifier."""
    assert rejected(event(event_id="x" * 257)) == {("event_id", "TOO_LONG")}
    assert rejected(event(event_id="bad\x00id")) == {("event_id", "INVALID_CHARACTERS")}


def test_occurred_at_more_than_72_hours_ahead_is_rejected() -> None:
    """occurred_at more than 72 hours after receipt is TOO_FAR_IN_FUTURE; exactly 72 hours is accepted."""
    assert rejected(event(occurred=RECEIVED + dt.timedelta(hours=72, seconds=1))) == {("occurred_at", "TOO_FAR_IN_FUTURE")}
    accepted(event(occurred=RECEIVED + dt.timedelta(hours=72)))


def test_occurred_at_older_than_max_age_is_rejected() -> None:
    """occurred_at older than max_age (365 days by default) is TOO_OLD; exactly max_age is accepted."""
    assert rejected(event(occurred=RECEIVED - dt.timedelta(days=365, seconds=1))) == {("occurred_at", "TOO_OLD")}
    accepted(event(occurred=RECEIVED - dt.timedelta(days=365)))


def test_limits_are_configurable() -> None:
    """Custom limits change what is too far in the future or too old."""
    limits = Limits(max_future=dt.timedelta(minutes=5), max_age=dt.timedelta(days=1))
    assert rejected(event(occurred=RECEIVED + dt.timedelta(minutes=6)), limits=limits) == {("occurred_at", "TOO_FAR_IN_FUTURE")}
    assert rejected(event(occurred=RECEIVED - dt.timedelta(days=2)), limits=limits) == {("occurred_at", "TOO_OLD")}


def test_invalid_timestamp_is_rejected() -> None:
    """An occurred_at outside the representable range is INVALID_TIMESTAMP."""
    e = event()
    e.occurred_at.seconds = 10**12
    assert rejected(e) == {("occurred_at", "INVALID_TIMESTAMP")}


def test_attributes_over_32_kib_are_rejected() -> None:
    """Attributes larger than 32 KiB serialized are TOO_LARGE."""
    assert rejected(event(attributes={"blob": "x" * (32 * 1024)})) == {("attributes", "TOO_LARGE")}
    accepted(event(attributes={"blob": "x" * (30 * 1024)}))


def test_attributes_too_deep_are_rejected() -> None:
    """Attributes nested deeper than 8 levels are TOO_DEEP; 8 levels are accepted."""
    assert rejected(event(attributes=nested(9))) == {("attributes", "TOO_DEEP")}
    accepted(event(attributes=nested(8)))


def test_attributes_with_too_many_keys_are_rejected() -> None:
    """More than 256 keys at one level of the attributes, at the top or nested, is TOO_MANY_KEYS."""
    assert rejected(event(attributes={f"k{i}": i for i in range(257)})) == {("attributes", "TOO_MANY_KEYS")}
    assert rejected(event(attributes={"inner": {f"k{i}": i for i in range(257)}})) == {("attributes", "TOO_MANY_KEYS")}
    accepted(event(attributes={f"k{i}": i for i in range(256)}))


def test_overlong_lists_in_attributes_are_rejected() -> None:
    """A list in the attributes longer than four times the key limit is TOO_MANY_KEYS."""
    assert rejected(event(attributes={"items": list(range(1025))})) == {("attributes", "TOO_MANY_KEYS")}
    accepted(event(attributes={"items": list(range(1024))}))


def test_negative_causation_depth_is_rejected() -> None:
    """A negative causation depth is OUT_OF_RANGE."""
    assert rejected(event(causation=event_pb2.Causation(depth=-1))) == {("causation.depth", "OUT_OF_RANGE")}


def test_all_problems_are_reported_at_once() -> None:
    """Every problem of an event is reported in one answer."""
    bad = event("Bad Type", "", occurred=RECEIVED + dt.timedelta(days=10), causation=event_pb2.Causation(depth=-2))
    assert rejected(bad) == {
        ("event_type", "INVALID_EVENT_TYPE"),
        ("subject_id", "REQUIRED"),
        ("occurred_at", "TOO_FAR_IN_FUTURE"),
        ("causation.depth", "OUT_OF_RANGE"),
    }


# --- ids ---------------------------------------------------------------------


def test_missing_event_id_is_derived_and_flagged() -> None:
    """An event without event_id gets a derived `d_` id and id_derived set."""
    e = accepted(event()).event
    assert e.event_id.startswith("d_")
    assert len(e.event_id) == 42
    assert e.id_derived is True


def test_given_event_id_clears_the_derived_flag() -> None:
    """An event with its own id keeps it, and id_derived is false even if the sender set it."""
    e = accepted(event(event_id="mine", id_derived=True)).event
    assert (e.event_id, e.id_derived) == ("mine", False)


def test_derived_id_is_deterministic_with_occurred_at() -> None:
    """The same content with the same occurred_at gets the same id, whenever it is received."""
    occurred = RECEIVED - dt.timedelta(hours=1)
    first = accepted(event(occurred=occurred, attributes={"a": 1}), received_at=RECEIVED).event.event_id
    second = accepted(event(occurred=occurred, attributes={"a": 1}), received_at=RECEIVED + dt.timedelta(minutes=3)).event.event_id
    assert first == second


def test_derived_id_depends_on_content() -> None:
    """Different subjects, types, attributes, times or tenants give different derived ids."""
    occurred = RECEIVED - dt.timedelta(hours=1)
    base = accepted(event(occurred=occurred, attributes={"a": 1})).event.event_id
    variants = [
        accepted(event(subject_id="u-2", occurred=occurred, attributes={"a": 1})).event.event_id,
        accepted(event("user.logged_in", occurred=occurred, attributes={"a": 1})).event.event_id,
        accepted(event(occurred=occurred, attributes={"a": 2})).event.event_id,
        accepted(event(occurred=occurred + dt.timedelta(seconds=1), attributes={"a": 1})).event.event_id,
    ]
    other_tenant = normalize("globex", event(occurred=occurred, attributes={"a": 1}), received_at=RECEIVED, source="grpc", partitions=8)
    assert isinstance(other_tenant, NormalizedEvent)
    variants.append(other_tenant.event.event_id)
    assert len({base, *variants}) == len(variants) + 1


def test_derived_id_without_occurred_at_depends_on_receipt() -> None:
    """Without occurred_at, identical events received at different times get different ids, and the same time the same id."""
    first = accepted(event(), received_at=RECEIVED).event.event_id
    again = accepted(event(), received_at=RECEIVED).event.event_id
    later = accepted(event(), received_at=RECEIVED + dt.timedelta(microseconds=1)).event.event_id
    assert first == again
    assert first != later


# --- aliases -----------------------------------------------------------------


def test_aliases_map_the_type_and_keep_the_original() -> None:
    """An aliased type is replaced by its target, and original_event_type records what was sent."""
    result = accepted(event("Signed Up"), aliases={"Signed Up": "user.signed_up"})
    assert result.event.event_type == "user.signed_up"
    assert result.original_event_type == "Signed Up"


def test_types_without_alias_are_unchanged() -> None:
    """A type with no alias keeps its name, and original_event_type equals it."""
    result = accepted(event("order.paid"), aliases={"Signed Up": "user.signed_up"})
    assert (result.event.event_type, result.original_event_type) == ("order.paid", "order.paid")


def test_alias_target_is_validated() -> None:
    """An alias to an invalid type is rejected like the type itself."""
    assert rejected(event("signup"), aliases={"signup": "Not Valid"}) == {("event_type", "INVALID_EVENT_TYPE")}


# --- partitions --------------------------------------------------------------


def test_partition_of_is_known_value() -> None:
    """partition_of is a fixed function of tenant and subject: it does not change between releases or processes."""
    assert partition_of("acme", "u-1", 1) == 0
    assert partition_of("acme", "u-1", 8) == partition_of("acme", "u-1", 8)
    assert partition_of("acme", "u-1", 1_000_003) == partition_of("acme", "u-1", 1_000_003)


@settings(deadline=None, database=None)
@given(tenant=st.text(max_size=40), subject=st.text(max_size=300), partitions=st.integers(1, 4096))
def test_partition_of_is_in_range_and_stable(tenant: str, subject: str, partitions: int) -> None:
    """partition_of is always in [0, partitions) and gives the same answer every time."""
    p = partition_of(tenant, subject, partitions)
    assert 0 <= p < partitions
    assert partition_of(tenant, subject, partitions) == p


@settings(deadline=None, database=None)
@given(subject=st.text(min_size=1, max_size=50))
def test_tenant_and_subject_are_hashed_apart(subject: str) -> None:
    """The tenant and subject are separated, so ("a", "bc") and ("ab", "c") are hashed differently."""
    assert partition_of("a", "b" + subject, 2**61 - 1) != partition_of("ab", subject, 2**61 - 1)


@settings(deadline=None, database=None, max_examples=300)
@given(event_type=st.text(max_size=200), subject=st.text(max_size=300), event_id=st.text(max_size=300), source=st.text(max_size=100))
def test_normalize_never_raises(event_type: str, subject: str, event_id: str, source: str) -> None:
    """For any strings, normalize returns either a NormalizedEvent or a non-empty list of FieldViolation."""
    e = event_pb2.Event(event_type=event_type, subject_id=subject, event_id=event_id, source=source)
    result = run(e)
    if isinstance(result, NormalizedEvent):
        assert EVENT_TYPE.fullmatch(result.event.event_type)
        assert result.event.subject_id == subject
        assert 0 <= result.partition < 8
    else:
        assert isinstance(result, list)
        assert result
        assert all(isinstance(v, FieldViolation) for v in result)
        assert {v.field for v in result} <= {"event_type", "subject_id", "event_id", "source"}


@settings(deadline=None, database=None)
@given(offset=st.integers(-(10**10), 10**10))
def test_normalize_never_raises_for_any_occurred_at(offset: int) -> None:
    """Any occurred_at, however far from the receipt time, gives an event or violations, never an exception."""
    e = event()
    e.occurred_at.seconds = int(RECEIVED.timestamp()) + offset
    result = run(e)
    assert isinstance(result, (NormalizedEvent, list))
    if isinstance(result, list):
        assert {v.field for v in result} == {"occurred_at"}


_clean_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=3)
_clean_trees = st.recursive(st.one_of(st.integers(0, 9), _clean_text, st.none()),
                            lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(_clean_text, inner, max_size=4)),
                            max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(tree=st.dictionaries(_clean_text, _clean_trees, min_size=1, max_size=5))
def test_the_shape_the_edge_measures_agrees_with_separate_walks(tree: dict[str, Any]) -> None:
    """The edge check's walk over the attributes measures the depth check_struct measures, and the widest object and
    longest list a walk of the plain dict finds."""
    from overture_runtime.edge import StructShape, item_violations
    from overture_runtime.validation import _depth

    def widest(value: Any) -> tuple[int, int]:
        """(most keys of an object, most items of a list) anywhere in *value*."""
        keys, items = (len(value), 0) if isinstance(value, dict) else (0, len(value)) if isinstance(value, list) else (0, 0)
        for child in value.values() if isinstance(value, dict) else value if isinstance(value, list) else ():
            k, i = widest(child)
            keys, items = max(keys, k), max(items, i)
        return keys, items

    e = event(attributes=tree)
    shape = StructShape()
    assert item_violations(e, shape=shape) == []
    assert (shape.depth, shape.keys, shape.items) == (_depth(e.attributes), *widest(tree))


@pytest.mark.parametrize("nanos", [0, 1, 999, 1000, 123_456_789, 999_999_999])
def test_occurred_at_is_kept_to_the_microsecond(nanos: int) -> None:
    """The normalized occurred_at is the sent instant truncated to the microsecond, as a datetime round trip would store it."""
    e = event(occurred=RECEIVED)
    e.occurred_at.nanos = nanos
    expected = event_pb2.Event()
    expected.occurred_at.FromDatetime(e.occurred_at.ToDatetime(tzinfo=dt.UTC))
    assert accepted(e).event.occurred_at == expected.occurred_at


@given(seconds=st.integers(min_value=int((RECEIVED - dt.timedelta(days=365)).timestamp()),
                           max_value=int((RECEIVED + dt.timedelta(hours=72)).timestamp()) - 1),
       nanos=st.integers(min_value=0, max_value=999_999_999))
def test_occurred_at_is_the_instant_protobuf_gives_to_the_microsecond(seconds: int, nanos: int) -> None:
    """occurred_at, converted without ToDatetime, is the datetime ToDatetime gives, and the stored Timestamp holds it."""
    e = event()
    e.occurred_at.seconds, e.occurred_at.nanos = seconds, nanos
    result = accepted(e)
    assert result.occurred_at == e.occurred_at.ToDatetime(tzinfo=dt.UTC)
    assert result.event.occurred_at.ToDatetime(tzinfo=dt.UTC) == result.occurred_at
    assert result.event.occurred_at.nanos == nanos - nanos % 1000


def test_an_event_type_is_judged_the_same_every_time_and_past_the_names_remembered() -> None:
    """The verdict on a type name is remembered, for good and bad names alike; names past the table's size are still checked."""
    for _ in range(2):
        assert rejected(event("Order Completed")) == {("event_type", "INVALID_EVENT_TYPE")}
        accepted(event("order.completed"))
    for i in range(5000):  # past the 4,096 remembered names
        accepted(event(f"kind_{i}.seen"))
    assert rejected(event("Kind.Unseen")) == {("event_type", "INVALID_EVENT_TYPE")}
    accepted(event("kind.unseen_too"))
