"""Every size and range limit of Overture's inputs, in one place.

The edge checks (:mod:`overture_runtime.edge`) read these, and the tables
use the same constants for their columns, so that anything the edge lets
through fits where it is stored. A string field's limit is found by its
name (the same name means the same concept across the protos, per the
AIPs), with the message-qualified exceptions in ``QUALIFIED_STRING_LIMITS``;
any other string may be at most ``TEXT`` characters.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "CONNECTOR",
    "CONSENT_SOURCE_COLUMN",
    "DURATION_MAX",
    "EVENT_TYPE",
    "GENERATED_ID",
    "IDENTIFIER",
    "JSON_DEPTH",
    "JSON_INTEGER_MAX",
    "NAME",
    "PAGE_TOKEN",
    "QUALIFIED_STRING_LIMITS",
    "REASON",
    "SOURCE",
    "STRING_LIMITS",
    "STRUCT_DEPTH",
    "TAG",
    "TENANT",
    "TEXT",
    "TIMESTAMP_MAX",
    "TIMESTAMP_MIN",
    "TIMEZONE",
    "string_limit",
]

TENANT = 64
"""A tenant id."""
NAME = 63
"""A resource name: rule set, journey, step, rule, purpose, segment, suppression list."""
IDENTIFIER = 256
"""An opaque id a caller chooses: subject, event, request, idempotency key."""
GENERATED_ID = 64
"""An id Overture issues (run, decision, delivery, dead-letter entry); a
caller that names a decision itself (``EvaluateRequest.decision_id``) has
the same room."""
EVENT_TYPE = 128
"""An event type such as ``user.signed_up``."""
TIMEZONE = 64
"""An IANA time zone name (the longest today is 32 characters)."""
SOURCE = 64
"""Where an event or a consent came from."""
TAG = 64
"""A message tag (frequency caps per tag)."""
REASON = 1024
"""A human reason for an audited change, or a delivery status detail."""
PAGE_TOKEN = 1024
"""A page token this service issued."""
CONNECTOR = 64
"""A connector's name."""
TEXT = 256 * 1024
"""Any other string: expressions, templates, message bodies."""

STRING_LIMITS: Mapping[str, int] = MappingProxyType({
    "tenant": TENANT,
    "subject_id": IDENTIFIER, "event_id": IDENTIFIER, "request_id": IDENTIFIER, "idempotency_key": IDENTIFIER,
    "root_event_id": IDENTIFIER, "trigger_event_id": IDENTIFIER,
    "decision_id": GENERATED_ID, "run_id": GENERATED_ID, "run_ids": GENERATED_ID, "delivery_id": GENERATED_ID,
    "journey": NAME, "rule_set": NAME, "step_id": NAME, "purpose": NAME, "segment": NAME,
    "event_type": EVENT_TYPE,
    "timezone": TIMEZONE, "default_timezone": TIMEZONE,
    "source": SOURCE,
    "tag": TAG, "tags": TAG,
    "reason": REASON, "detail": REASON,
    "page_token": PAGE_TOKEN,
    "connector": CONNECTOR,
})
"""String limits by field name."""

QUALIFIED_STRING_LIMITS: Mapping[str, int] = MappingProxyType({})
"""Limits of fields whose name means something else in one message, by the
field's full name (``overture.rules.v1.SomeMessage.field``). Empty today."""

CONSENT_SOURCE_COLUMN = len("event:") + IDENTIFIER
"""Consents set by an event record ``event:<event id>`` as their source."""

STRUCT_DEPTH = 32
"""The deepest nesting of any ``Struct`` or JSON value (fields may set less)."""
JSON_DEPTH = 64
"""The deepest nesting of an HTTP JSON body."""
JSON_INTEGER_MAX = 2**63 - 1
"""The largest integer magnitude a JSON body may hold (it becomes a double)."""

TIMESTAMP_MIN = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)
"""The earliest time Overture accepts."""
TIMESTAMP_MAX = dt.datetime(9000, 1, 1, tzinfo=dt.UTC)
"""The latest time Overture accepts: far enough inside datetime's range
(year 9999) that adding any accepted duration cannot overflow."""
DURATION_MAX = dt.timedelta(days=100 * 366)
"""The longest duration Overture accepts (delays, windows, timeouts, backoffs)."""


def string_limit(field_full_name: str, field_name: str) -> int:
    """The most characters a string field may hold."""
    return QUALIFIED_STRING_LIMITS.get(field_full_name) or STRING_LIMITS.get(field_name, TEXT)
