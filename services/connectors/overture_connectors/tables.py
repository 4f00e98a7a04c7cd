"""The connectors service's tables. Every table is keyed by tenant first."""

from __future__ import annotations

import sqlalchemy as sa

from overture_runtime.db import utc_datetime

metadata = sa.MetaData()

deliveries = sa.Table(
    "connectors_deliveries",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("idempotency_key", sa.String(256), primary_key=True),
    sa.Column("delivery_id", sa.String(64), nullable=False),
    sa.Column("connector", sa.String(64), nullable=False),
    sa.Column("channel", sa.String(32), nullable=False),
    sa.Column("subject_id", sa.String(256), nullable=False),
    # The address is personal data: only its hash is kept, to match provider callbacks.
    sa.Column("address_hash", sa.String(64), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("retryable", sa.Boolean, nullable=False),
    sa.Column("provider_message_id", sa.String(256), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("last_error", sa.Text, nullable=False),
    sa.Column("create_time", utc_datetime, nullable=False),
    sa.Column("update_time", utc_datetime, nullable=False),
    sa.UniqueConstraint("tenant", "delivery_id", name="connectors_deliveries_id"),
)
