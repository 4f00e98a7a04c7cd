"""The connectors service's tables. Every table is keyed by tenant first."""

from __future__ import annotations

import sqlalchemy as sa

from overture_runtime.audit_outbox import audit_outbox_table
from overture_runtime.db import JSONType, utc_datetime
from overture_runtime.idempotency import idempotency_table

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
    # The endpoint's answer, when the message asked to keep it (webhook keep_response); personal data, never logged.
    sa.Column("response", JSONType, nullable=True),
    sa.Column("segments", sa.Integer, nullable=False, server_default="0"),  # SMS: the segments billed
    # In doubt: when the sweeper asks the provider again, and how often it asked.
    sa.Column("next_check_time", utc_datetime, nullable=True),
    sa.Column("checks", sa.Integer, nullable=False, server_default="0"),
    sa.UniqueConstraint("tenant", "delivery_id", name="connectors_deliveries_id"),
    # The deliveries waiting for someone: in doubt (an operator, a status
    # lookup) or still claimed. Partial, so it holds only those few rows.
    sa.Index("connectors_deliveries_open", "tenant", "delivery_id",
             postgresql_where=sa.text("status IN ('in_doubt', 'sending')"), sqlite_where=sa.text("status IN ('in_doubt', 'sending')")),
    # Bounces and complaints name a delivery only by its Message-ID; provider callbacks by the provider's
    # id within their tenant (the tenant is in the index so that no plan combines it with another index).
    sa.Index("connectors_deliveries_provider_message_id", "provider_message_id", "tenant"),
    # The sweeper's work, across tenants, soonest first: in-doubt deliveries due to be asked about again (only
    # they have a next check: every other status clears it), and claims left SENDING, oldest first. Partial, so
    # each holds only those few rows.
    sa.Index("connectors_deliveries_recheck", "next_check_time", postgresql_where=sa.text("next_check_time IS NOT NULL"),
             sqlite_where=sa.text("next_check_time IS NOT NULL")),
    sa.Index("connectors_deliveries_claimed", "update_time", postgresql_where=sa.text("status = 'sending'"),
             sqlite_where=sa.text("status = 'sending'")),
)

status_outbox = sa.Table(
    "connectors_status_outbox",
    metadata,
    # Statuses learned after a send returned (a provider's callback, a status
    # lookup, an operator's resolution), on their way to the orchestrator's
    # ReportDeliveryStatus; written with the change, deleted once reported.
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("report_id", sa.String(64), primary_key=True),
    sa.Column("idempotency_key", sa.String(256), nullable=False),
    sa.Column("delivery_id", sa.String(64), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("occur_time", utc_datetime, nullable=False),
    sa.Column("error", sa.Text, nullable=True),  # why the orchestrator refused it; kept, not retried
    sa.Index("connectors_status_outbox_pending", "report_id"),
)

audit_outbox = audit_outbox_table(metadata, "connectors")
"""Audit records of operators' resolutions, written in the resolution's transaction (ADR 0008)."""

idempotency = idempotency_table(metadata, "connectors")
"""AIP-155 request ids of mutating calls (ResolveDelivery)."""

inbox_messages = sa.Table(
    "connectors_inbox_messages",
    metadata,
    # The key is (tenant, message_id), not led by the subject: every query of a subject's messages
    # then has exactly one index that holds only its rows (listed, unread), which even statistics
    # taken before the subject had messages cannot trade for a walk past archived or read ones.
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("message_id", sa.String(64), primary_key=True),
    sa.Column("subject_id", sa.String(256), nullable=False),
    sa.Column("idempotency_key", sa.String(256), nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("category", sa.Integer, nullable=False),
    sa.Column("create_time", utc_datetime, nullable=False),
    sa.Column("read_time", utc_datetime, nullable=True),
    sa.Column("archive_time", utc_datetime, nullable=True),
    # One message per delivery: the in-app connector's status lookup, and its guard against a repeat.
    sa.UniqueConstraint("tenant", "idempotency_key", name="connectors_inbox_messages_key"),
    # The listing (newest first) and the unread count read only the rows they show or count.
    sa.Index("connectors_inbox_messages_listed", "tenant", "subject_id", "message_id",
             postgresql_where=sa.text("archive_time IS NULL"), sqlite_where=sa.text("archive_time IS NULL")),
    # The unread index holds the message id too, so that marking given messages read finds them in it.
    sa.Index("connectors_inbox_messages_unread", "tenant", "subject_id", "message_id",
             postgresql_where=sa.text("read_time IS NULL AND archive_time IS NULL"),
             sqlite_where=sa.text("read_time IS NULL AND archive_time IS NULL")),
)

push_subscriptions = sa.Table(
    "connectors_push_subscriptions",
    metadata,
    # One row per browser subscription; its id is derived from the endpoint,
    # so the same endpoint stored again (by any subject) is the same row.
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("subscription_id", sa.String(64), primary_key=True),
    sa.Column("subject_id", sa.String(256), nullable=False),
    # The endpoint and keys are personal data (they reach and decrypt for one browser): never logged.
    sa.Column("endpoint", sa.Text, nullable=False),
    sa.Column("p256dh", sa.String(128), nullable=False),
    sa.Column("auth", sa.String(64), nullable=False),
    sa.Column("user_agent", sa.String(200), nullable=False),
    sa.Column("create_time", utc_datetime, nullable=False),
    sa.Column("update_time", utc_datetime, nullable=False),
    sa.Column("expire_time", utc_datetime, nullable=True),
    sa.Column("last_send_time", utc_datetime, nullable=True),
    # A subject's subscriptions: every push send reads them, the listing pages through them.
    sa.Index("connectors_push_subscriptions_subject", "tenant", "subject_id", "subscription_id"),
)

push_sends = sa.Table(
    "connectors_push_sends",
    metadata,
    # One row per (message, subscription) the web_push connector tried: the
    # per-device claim that keeps a retried message from reaching a device
    # twice. Read by the primary key's (tenant, idempotency_key) prefix only.
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("idempotency_key", sa.String(256), primary_key=True),
    sa.Column("subscription_id", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("update_time", utc_datetime, nullable=False),
)
