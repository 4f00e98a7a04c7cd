"""The orchestrator's tables. Every table is keyed by tenant first."""

from __future__ import annotations

import sqlalchemy as sa

from overture_runtime.audit_outbox import audit_outbox_table
from overture_runtime.db import utc_datetime
from overture_runtime.idempotency import idempotency_table

metadata = sa.MetaData()

journeys = sa.Table(
    "orchestrator_journeys",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("latest_version", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # active | paused
    sa.Column("trigger_event_type", sa.String(128), nullable=True),
    sa.Column("update_time", utc_datetime, nullable=False),
    sa.Index("orchestrator_journeys_trigger", "tenant", "trigger_event_type"),
)

journey_versions = sa.Table(
    "orchestrator_journey_versions",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("version", sa.BigInteger, primary_key=True),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),  # canonical JSON of JourneySpec
    sa.Column("author", sa.String(256), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("create_time", utc_datetime, nullable=False),
)

runs = sa.Table(
    "orchestrator_runs",
    metadata,
    # One row per run, kept small: it is updated when the run changes state,
    # and never holds the trigger payload (run_inputs) or step history
    # (step_attempts).
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("journey", sa.String(63), nullable=False),
    sa.Column("journey_version", sa.BigInteger, nullable=False),
    sa.Column("subject_id", sa.String(256), nullable=False),
    sa.Column("trigger_event_id", sa.String(300), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # model.RunState
    sa.Column("current_step", sa.String(63), nullable=False),
    sa.Column("create_time", utc_datetime, nullable=False),
    sa.Column("update_time", utc_datetime, nullable=False),
    # One trigger event makes at most one run per journey and subject, whatever
    # the version: a republished journey must not run an event a second time.
    sa.UniqueConstraint("tenant", "journey", "subject_id", "trigger_event_id", name="orchestrator_runs_once_per_event"),
    sa.Index("orchestrator_runs_subject", "tenant", "subject_id", "create_time"),
    sa.Index("orchestrator_runs_event", "tenant", "trigger_event_id"),
    # Dead letters of a journey, and pausing it (its live runs).
    sa.Index("orchestrator_runs_journey_state", "tenant", "journey", "state", "run_id"),
)

run_inputs = sa.Table(
    "orchestrator_run_inputs",
    metadata,
    # What a run started from, written once with the run and never updated.
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("trigger_event", sa.LargeBinary, nullable=False),  # the common.v1.Event snapshot
    sa.Column("inline_spec", sa.Text, nullable=True),  # the JourneySpec of an Enqueue run
)

tokens = sa.Table(
    "orchestrator_tokens",
    metadata,
    # Where a live run is: one row per token (one per run today; parallel
    # branches will hold several). Workers claim due tokens with SKIP LOCKED;
    # a claim pushes due_time past the lease, so a token whose worker died
    # comes due again by itself. Timers are tokens with a due_time ahead.
    # A run's token is deleted when the run ends.
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("token", sa.SmallInteger, primary_key=True),
    sa.Column("node", sa.String(63), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # model.TokenState
    sa.Column("due_time", utc_datetime, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),  # attempts of the node so far
    sa.Column("evaluations", sa.Integer, nullable=False),  # send decisions made at the node (each gets its own id)
    sa.Column("lease_owner", sa.String(128), nullable=True),
    sa.Index("orchestrator_tokens_due", "due_time"),
)

step_attempts = sa.Table(
    "orchestrator_step_attempts",
    metadata,
    # Every attempt of every step, appended; the run's history.
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("attempt_id", sa.String(64), primary_key=True),  # time-ordered
    sa.Column("step_id", sa.String(63), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # model.StepState
    sa.Column("decision_id", sa.String(64), nullable=False),
    sa.Column("delivery_id", sa.String(64), nullable=False),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("start_time", utc_datetime, nullable=False),
    sa.Column("end_time", utc_datetime, nullable=True),
    sa.Column("wake_time", utc_datetime, nullable=True),
)

dead_letters = sa.Table(
    "orchestrator_dead_letters",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("entry_id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # event | run
    sa.Column("ref", sa.String(300), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("last_error", sa.Text, nullable=False),
    sa.Column("create_time", utc_datetime, nullable=False),
    sa.Index("orchestrator_dead_letters_ref", "tenant", "kind", "ref"),  # a retry removes the run's entry
)

audit_outbox = audit_outbox_table(metadata, "orchestrator")
"""Audit records of journey and run changes, written in the change's own transaction (ADR 0008)."""

idempotency = idempotency_table(metadata, "orchestrator")
