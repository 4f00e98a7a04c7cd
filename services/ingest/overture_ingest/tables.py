"""The ingest service's tables: the durable event log is the source of truth.

``seq`` orders the log, and the relay publishes in (``txid``, ``seq``) order:
the inserting transaction's id, then the log order within it.
``(tenant, event_id)`` is unique, which is what drops duplicates.
"""

from __future__ import annotations

import sqlalchemy as sa

from overture_runtime.db import utc_datetime

metadata = sa.MetaData()

events = sa.Table(
    "ingest_events",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("event_id", sa.String(256), nullable=False),
    sa.Column("event_type", sa.String(128), nullable=False),
    sa.Column("original_event_type", sa.String(128), nullable=False),
    sa.Column("subject_id", sa.String(256), nullable=False),
    sa.Column("occurred_at", utc_datetime, nullable=False),
    sa.Column("received_at", utc_datetime, nullable=False),
    sa.Column("commit_time", utc_datetime, nullable=False),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("id_derived", sa.Boolean, nullable=False),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),  # the normalized common.v1.Event
    # Set by the relay on SQLite, and on PostgreSQL before ADR 0024; since
    # then the relay's position (ingest_relay_state) says what it published.
    sa.Column("published_at", utc_datetime, nullable=True),
    sa.Column("profile_pending", sa.Boolean, nullable=False),
    sa.Column("profile_applied_at", utc_datetime, nullable=True),
    # The inserting transaction's id (pg_current_xact_id(), the column's
    # default on PostgreSQL; 0 on SQLite): the relay reads the events past
    # its position in this order, down ingest_events_unpublished, whose
    # predicate every event meets since ADR 0024 but those marked before.
    sa.Column("txid", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.UniqueConstraint("tenant", "event_id", name="ingest_events_tenant_event_id"),
    sa.Index("ingest_events_unpublished", "txid", "seq", postgresql_where=sa.text("published_at IS NULL"),
             sqlite_where=sa.text("published_at IS NULL")),
    sa.Index("ingest_events_profile_pending", "seq", postgresql_where=sa.text("profile_pending"),
             sqlite_where=sa.text("profile_pending")),
    # ListEvents (windows.py): a tenant's window by commit time, in log
    # order, of every type or of one type; the retention purge, tenant by
    # tenant, through the first.
    sa.Index("ingest_events_window", "tenant", "commit_time", "seq"),
    sa.Index("ingest_events_type_window", "tenant", "event_type", "commit_time", "seq"),
)

relay_state = sa.Table(
    "ingest_relay_state",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    # A random marker also kept in Redis: when Redis no longer has it, Redis
    # lost data, and recently published events are published again.
    sa.Column("epoch", sa.String(64), nullable=False),
    # Every event with a lower txid is published (PostgreSQL; ADR 0023): the
    # xmin of ``lo`` since ADR 0024.
    sa.Column("floor", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("update_time", utc_datetime, nullable=False),
    # The relay's position (PostgreSQL; ADR 0024), as pg_snapshot text: every
    # event whose transaction ``lo`` sees is published; of those that ``hi``
    # sees and ``lo`` does not (the window being published), those up to
    # (cursor_txid, cursor_seq). NULL lo: the floor's (before ADR 0024).
    sa.Column("lo", sa.Text, nullable=True),
    sa.Column("hi", sa.Text, nullable=True),
    sa.Column("cursor_txid", sa.BigInteger, nullable=True),
    sa.Column("cursor_seq", sa.BigInteger, nullable=True),
)

relay_ticks = sa.Table(
    "ingest_relay_ticks",
    metadata,
    # The relay's published position (``lo``), recorded at most once a second:
    # an event was published by the first tick whose snapshot sees its
    # transaction (GetEvent's publish_time), and a Redis that lost the stream
    # is refilled from the last tick before the republish horizon.
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("at", utc_datetime, primary_key=True),
    sa.Column("snapshot", sa.Text, nullable=False),
)
