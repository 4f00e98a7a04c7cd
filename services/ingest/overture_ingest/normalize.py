"""Validating and normalizing one event. Pure: no I/O, time passed in.

An event is rejected with one field violation per problem; a valid event is
normalized: aliases resolved, times in UTC, ``received_at`` and ``source``
stamped, and an id derived from the content when the sender gave none.

It works on the proto itself, in one pass: the attributes' depth and key
counts are measured in the edge checks' own walk (:class:`StructShape`), and
times are stamped as Timestamp seconds and nanos, without a detour through dicts.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from google.protobuf import timestamp_pb2

from overture.common.v1 import event_pb2
from overture_runtime.clock import EPOCH
from overture_runtime.edge import StructShape, item_violations
from overture_runtime.errors import FieldViolation, Violations
from overture_runtime.limits import EVENT_TYPE as EVENT_TYPE_MAX
from overture_runtime.protojson import struct_to_dict
from overture_runtime.validation import check_identifier

__all__ = ["PROFILE_EVENT_TYPES", "Limits", "NormalizedEvent", "normalize", "partition_of"]

EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){0,7}$")
PROFILE_EVENT_TYPES = frozenset({"identify", "consent.granted", "consent.revoked", "segment.entered", "segment.exited"})
"""Event types that update the subject's profile through the rules service."""


@dataclass(frozen=True)
class Limits:
    """What ingest accepts."""

    max_attributes_bytes: int = 32 * 1024
    """The largest serialized attributes."""
    max_attribute_depth: int = 8
    """The deepest nesting of attributes."""
    max_attribute_keys: int = 256
    """The most keys at any one level of the attributes."""
    max_future: dt.timedelta = dt.timedelta(hours=72)
    """How far in the future ``occurred_at`` may be."""
    max_age: dt.timedelta = dt.timedelta(days=365)
    """How far in the past ``occurred_at`` may be."""


class NormalizedEvent(NamedTuple):
    """A valid event, ready to store (a tuple: made once per event, at a third of a frozen dataclass's cost)."""

    event: event_pb2.Event
    """The normalized event."""
    original_event_type: str
    """The type as sent, before aliases."""
    partition: int
    """The stream partition, from the subject."""
    occurred_us: int
    """When it happened, in microseconds since the Unix epoch (what the insert sends: a datetime costs more to make and to encode)."""
    received_at: dt.datetime
    """When ingest received it (UTC)."""

    @property
    def occurred_at(self) -> dt.datetime:
        """When it happened (UTC), as a datetime."""
        return EPOCH + dt.timedelta(microseconds=self.occurred_us)


@functools.lru_cache(maxsize=1 << 16)
def partition_of(tenant: str, subject_id: str, partitions: int) -> int:
    """The stream partition of a subject: stable, so a subject's events stay
    in order. Remembered for the most recent 65,536 subjects, since a
    subject's events tend to come together."""
    digest = hashlib.sha256(f"{tenant}\x00{subject_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % partitions


_stamped: tuple[dt.datetime, timestamp_pb2.Timestamp, int] | None = None
_MICROSECOND = dt.timedelta(microseconds=1)
_TYPES_KNOWN = 4096
_valid_types: dict[str, bool] = {}


def _type_ok(event_type: str) -> bool:
    """Whether *event_type* is a well-formed name: remembered for the first
    4,096 names seen, since a tenant sends few types many times."""
    known = _valid_types.get(event_type)
    if known is None:
        known = len(event_type) <= EVENT_TYPE_MAX and EVENT_TYPE.fullmatch(event_type) is not None
        if len(_valid_types) < _TYPES_KNOWN:
            _valid_types[event_type] = known
    return known


def _timestamp(when: dt.datetime) -> tuple[timestamp_pb2.Timestamp, int]:
    """``Timestamp.FromDatetime`` of an aware datetime (not to be changed),
    and the same instant in microseconds since the epoch; the last one is
    kept, since every event of a batch has the same receipt time."""
    global _stamped
    if _stamped is not None and _stamped[0] is when:
        return _stamped[1], _stamped[2]
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    _stamped = (when, stamp, stamp.seconds * 1_000_000 + stamp.nanos // 1000)
    return stamp, _stamped[2]


def derive_id(tenant: str, event: event_pb2.Event, occurred: dt.datetime | None, received: dt.datetime) -> str:
    """A deterministic id from the event's content. Without ``occurred_at``
    the receipt time is part of it: identical timeless events stay distinct."""
    body = {
        "tenant": tenant, "event_type": event.event_type, "subject_id": event.subject_id,
        "occurred_at": (occurred or received).isoformat(), "attributes": struct_to_dict(event.attributes),
    }
    return "d_" + hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:40]


def normalize(
    tenant: str, event: event_pb2.Event, *, received_at: dt.datetime, source: str, partitions: int,
    aliases: Mapping[str, str] | None = None, limits: Limits = Limits(), sent_as: str = "",
) -> NormalizedEvent | list[FieldViolation]:
    """Validate *event*; return it normalized, or its violations. *sent_as* is
    the type as the producer named it, when a door already translated it
    (Segment's ``Order Completed``)."""
    shape = StructShape()
    unstorable = item_violations(event, shape=shape)
    if unstorable:  # times, numbers or text that nothing downstream could hold
        return unstorable
    v = Violations()
    event_type = event.event_type
    original = sent_as or event_type
    if aliases:
        event_type = aliases.get(original) or aliases.get(event_type, event_type)
    if not event_type:
        v.add("event_type", "event_type is required", "REQUIRED")
    elif not _type_ok(event_type):
        v.add("event_type", "event_type must be lower-case words separated by dots, for example 'user.signed_up'", "INVALID_EVENT_TYPE")
    check_identifier(v, "subject_id", event.subject_id)
    check_identifier(v, "event_id", event.event_id, required=False)
    received, received_us = _timestamp(received_at)
    occurred: int | None = None
    nanos = 0
    if event.HasField("occurred_at"):
        stamp = event.occurred_at  # the instant ToDatetime gives (to the microsecond), as an integer (the edge checked the range)
        nanos = stamp.nanos
        occurred = stamp.seconds * 1_000_000 + nanos // 1000
        if occurred > received_us + limits.max_future // _MICROSECOND:
            v.add("occurred_at", f"occurred_at is more than {limits.max_future.total_seconds() / 3600:g} hours in the future", "TOO_FAR_IN_FUTURE")
        elif occurred < received_us - limits.max_age // _MICROSECOND:
            v.add("occurred_at", f"occurred_at is older than {limits.max_age.days} days", "TOO_OLD")
    attributes = event.attributes
    if attributes.fields:
        size = attributes.ByteSize()
        if size > limits.max_attributes_bytes:
            v.add("attributes", f"attributes is {size} bytes; the limit is {limits.max_attributes_bytes}", "TOO_LARGE")
        elif shape.depth > limits.max_attribute_depth:
            v.add("attributes", f"attributes nests deeper than {limits.max_attribute_depth} levels", "TOO_DEEP")
        if (shape.keys > limits.max_attribute_keys or shape.items > limits.max_attribute_keys * 4) and not v:
            v.add("attributes", f"attributes have more than {limits.max_attribute_keys} keys at one level", "TOO_MANY_KEYS")
    if event.causation.depth < 0:
        v.add("causation.depth", "depth must not be negative", "OUT_OF_RANGE")
    if v:
        return v.items
    normalized = event_pb2.Event()
    normalized.CopyFrom(event)
    normalized.event_type = event_type
    normalized.source = event.source or source
    if occurred is None:
        normalized.occurred_at.CopyFrom(received)
    elif nanos % 1000:  # what FromDatetime(occurred) stores: the given instant, to the microsecond
        normalized.occurred_at.nanos = nanos - nanos % 1000
    normalized.received_at.CopyFrom(received)
    result = NormalizedEvent(normalized, original, partition_of(tenant, event.subject_id, partitions),
                             received_us if occurred is None else occurred, received_at)
    if not event.event_id:
        normalized.event_id = derive_id(tenant, event, None if occurred is None else result.occurred_at, received_at)
        normalized.id_derived = True
    else:
        normalized.id_derived = False
    return result
