"""The rules service's tables. Every table is keyed by tenant first."""

from __future__ import annotations

import sqlalchemy as sa

from overture_runtime import limits
from overture_runtime.db import JSONType, utc_datetime
from overture_runtime.idempotency import idempotency_table

metadata = sa.MetaData()

rule_sets = sa.Table(
    "rules_rule_sets",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("latest_version", sa.BigInteger, nullable=False),
    sa.Column("active_version", sa.BigInteger, nullable=True),
    sa.Column("create_time", utc_datetime, nullable=False),
    sa.Column("update_time", utc_datetime, nullable=False),
)

rule_set_versions = sa.Table(
    "rules_rule_set_versions",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("rule_set", sa.String(63), primary_key=True),
    sa.Column("version", sa.BigInteger, primary_key=True),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),  # canonical JSON of RuleSetSpec
    sa.Column("author", sa.String(256), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("parent_version", sa.BigInteger, nullable=False),
    sa.Column("create_time", utc_datetime, nullable=False),
)

audit_events = sa.Table(
    "rules_audit_events",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("sequence", sa.BigInteger, primary_key=True),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("time", utc_datetime, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("target", sa.String(512), nullable=False),
    sa.Column("details", JSONType, nullable=False),
    sa.Column("previous_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    # Set on entries other services recorded (AuditService.RecordAuditEvents):
    # their id for the record, which makes recording idempotent, and who sent it.
    sa.Column("record_id", sa.String(64), nullable=True),
    sa.Column("recorded_by", sa.String(256), nullable=True),
    sa.Index("rules_audit_events_record", "tenant", "record_id", unique=True),
)

profiles = sa.Table(
    "rules_profiles",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("subject_id", sa.String(256), primary_key=True),
    sa.Column("traits", JSONType, nullable=False),
    sa.Column("segments", JSONType, nullable=False),
    sa.Column("suppression_lists", JSONType, nullable=False),
    # Free-form labels set by UpdateProfile (journeys' update-profile steps).
    sa.Column("tags", JSONType, nullable=False, server_default=sa.text("'[]'")),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("erased", sa.Boolean, nullable=False),
    sa.Column("create_time", utc_datetime, nullable=False),
    sa.Column("update_time", utc_datetime, nullable=False),
)

segment_members = sa.Table(
    "rules_segment_members",
    metadata,
    # Who is in which segment: the profiles' `segments` arrays, one row per
    # (segment, subject), kept in the same transactions. ListProfiles pages
    # through a segment by its primary key, reading only the page's rows.
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("segment", sa.String(limits.NAME), primary_key=True),
    sa.Column("subject_id", sa.String(256), primary_key=True),
)

consents = sa.Table(
    "rules_consents",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("subject_id", sa.String(256), primary_key=True),
    sa.Column("channel", sa.String(32), primary_key=True),
    sa.Column("purpose", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("source", sa.String(limits.CONSENT_SOURCE_COLUMN), nullable=False),  # "event:<event id>" or a caller's source
    sa.Column("update_time", utc_datetime, nullable=False),
)

decisions = sa.Table(
    "rules_decisions",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("decision_id", sa.String(64), primary_key=True),
    sa.Column("rule_set", sa.String(63), nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("subject_id", sa.String(256), nullable=False),
    sa.Column("allowed", sa.Boolean, nullable=False),
    sa.Column("mode", sa.String(32), nullable=False),
    sa.Column("reservation_state", sa.String(32), nullable=False),
    sa.Column("evaluate_time", utc_datetime, nullable=False),
    sa.Column("create_time", utc_datetime, nullable=False),
    sa.Column("record", sa.LargeBinary, nullable=False),  # the serialized Decision
    sa.Column("replay", JSONType, nullable=True),  # masked inputs, for backtests (see replay.py)
    sa.Index("rules_decisions_subject", "tenant", "subject_id", "create_time"),
    sa.Index("rules_decisions_window", "tenant", "rule_set", "evaluate_time"),
)

idempotency = idempotency_table(metadata, "rules")
