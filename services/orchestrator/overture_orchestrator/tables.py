"""The orchestrator's tables. Every table is keyed by tenant first."""

from __future__ import annotations

import sqlalchemy as sa

from overture_runtime.audit_outbox import audit_outbox_table
from overture_runtime.db import JSONType, utc_datetime
from overture_runtime.idempotency import idempotency_table

metadata = sa.MetaData()

journeys = sa.Table(
    "orchestrator_journeys",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("latest_version", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # active | paused | archived
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

journey_drafts = sa.Table(
    "orchestrator_journey_drafts",
    metadata,
    # One working copy per journey (it may precede the first version),
    # replaced by every save; never run. Its problems and warnings are those
    # found when it was saved (drafts.py).
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),  # canonical JSON of JourneySpec
    sa.Column("digest", sa.String(64), nullable=False),  # publishing this content discards the draft
    sa.Column("problems", JSONType, nullable=False),  # [{"field", "description", "reason"}, ...]
    sa.Column("warnings", JSONType, nullable=False),
    sa.Column("author", sa.String(256), nullable=False),
    sa.Column("update_time", utc_datetime, nullable=False),
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
    sa.Column("converted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("goal", sa.String(128), nullable=False, server_default=""),
    sa.Column("arms", JSONType, nullable=True),  # ["<split step>:<branch>", ...]
    sa.Column("holdout", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("actions", sa.Integer, nullable=False, server_default="0"),  # actions taken, against settings.max_actions
    sa.Column("cancel_reason", sa.Text, nullable=False, server_default=""),
    # One trigger event makes at most one run per journey and subject, whatever
    # the version: a republished journey must not run an event a second time.
    sa.UniqueConstraint("tenant", "journey", "subject_id", "trigger_event_id", name="orchestrator_runs_once_per_event"),
    sa.Index("orchestrator_runs_subject", "tenant", "subject_id", "create_time"),
    sa.Index("orchestrator_runs_event", "tenant", "trigger_event_id"),
    # Dead letters of a journey, and pausing it (its live runs).
    sa.Index("orchestrator_runs_journey_state", "tenant", "journey", "state", "run_id"),
    # A subject's live runs, for goals: only live rows, so it does not grow with history.
    sa.Index("orchestrator_runs_live_subject", "tenant", "subject_id", postgresql_where=sa.text("state IN ('running', 'waiting')"),
             sqlite_where=sa.text("state IN ('running', 'waiting')")),
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
    sa.Column("deadline", utc_datetime, nullable=True),  # a wait's timeout; due_time moves earlier when the wait ends
    sa.Column("node_since", utc_datetime, nullable=True),  # when the token reached its node, for step latency
    sa.Index("orchestrator_tokens_due", "due_time"),
)

run_context = sa.Table(
    "orchestrator_run_context",
    metadata,
    # What later steps read as ``steps``: a webhook's kept response, the
    # event that ended a wait; and a loop head's visit count. Small, append
    # or replace per key.
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(160), primary_key=True),  # "<step id>.response" | "<step id>.event" | "visits:<step id>"
    sa.Column("value", JSONType, nullable=False),
)

waits = sa.Table(
    "orchestrator_waits",
    metadata,
    # Tokens waiting for an event of their subject (wait_for_event), or for
    # any profile change (wait_until: event_type ""). The consumer looks up
    # each batch's (event type, subject) pairs here.
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("token", sa.SmallInteger, primary_key=True),
    sa.Column("subject_id", sa.String(256), nullable=False),
    sa.Column("event_type", sa.String(128), nullable=False),
    sa.Column("step_id", sa.String(63), nullable=False),
    sa.Column("journey", sa.String(63), nullable=False),
    sa.Column("journey_version", sa.BigInteger, nullable=False),
    sa.Index("orchestrator_waits_event", "tenant", "event_type", "subject_id"),
)

approvals = sa.Table(
    "orchestrator_approvals",
    metadata,
    # Approval requests and their decisions (kept as history).
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("step_id", sa.String(63), primary_key=True),
    sa.Column("token", sa.SmallInteger, nullable=False),
    sa.Column("journey", sa.String(63), nullable=False),
    sa.Column("journey_version", sa.BigInteger, nullable=False),
    sa.Column("subject_id", sa.String(256), nullable=False),
    sa.Column("approver_role", sa.String(128), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("request_time", utc_datetime, nullable=False),
    sa.Column("expire_time", utc_datetime, nullable=False),
    sa.Column("decision", sa.String(16), nullable=False),  # "" pending | approved | rejected | expired
    sa.Column("decided_by", sa.String(256), nullable=False, server_default=""),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Column("decide_time", utc_datetime, nullable=True),
    sa.Index("orchestrator_approvals_pending", "tenant", "request_time", "run_id", postgresql_where=sa.text("decision = ''"),
             sqlite_where=sa.text("decision = ''")),
)

stats = sa.Table(
    "orchestrator_stats",
    metadata,
    # A journey's counters, added to as runs move (in the same transaction):
    # run-level metrics under step_id "", step metrics under their step.
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("journey", sa.String(63), primary_key=True),
    sa.Column("version", sa.BigInteger, primary_key=True),
    sa.Column("step_id", sa.String(63), primary_key=True),
    sa.Column("metric", sa.String(160), primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
)

inactivity = sa.Table(
    "orchestrator_inactivity",
    metadata,
    # One timer per (journey, subject), re-armed by every event of the
    # inactivity trigger's type; when it comes due, the run starts.
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("journey", sa.String(63), primary_key=True),
    sa.Column("subject_id", sa.String(256), primary_key=True),
    sa.Column("due_time", utc_datetime, nullable=False),  # when it fires; pushed past a lease while it fires
    sa.Column("fire_time", utc_datetime, nullable=False),  # the time it was armed for: names the run it starts
    sa.Column("lease_owner", sa.String(128), nullable=True),
    sa.Index("orchestrator_inactivity_due", "due_time"),
)

schedules = sa.Table(
    "orchestrator_schedules",
    metadata,
    # A schedule trigger's next firing, and how far the current one got
    # (``cursor``: the last subject id entered), so a firing survives a crash.
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("journey", sa.String(63), primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("due_time", utc_datetime, nullable=False),  # the next firing, or now while one is in progress
    sa.Column("fire_time", utc_datetime, nullable=True),  # the firing in progress
    sa.Column("cursor", sa.String(256), nullable=False, server_default=""),
    sa.Column("lease_owner", sa.String(128), nullable=True),
    sa.Index("orchestrator_schedules_due", "due_time"),
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
    sa.Column("edge", sa.String(128), nullable=False, server_default=""),  # the edge the step was left by
    sa.Column("detail", JSONType, nullable=True),  # {"input": {...}, "output": {...}}, masked
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

backtests = sa.Table(
    "orchestrator_backtests",
    metadata,
    # Journey backtests: a long-running operation, queued, then run by one
    # replica at a time under a lease (backtests.py).
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("backtest_id", sa.String(64), primary_key=True),
    sa.Column("journey", sa.String(63), nullable=False),
    sa.Column("candidate_spec", sa.Text, nullable=True),  # canonical JSON of the candidate JourneySpec, when one was given
    sa.Column("candidate_version", sa.BigInteger, nullable=False),  # 0 for candidate_spec
    sa.Column("baseline_version", sa.BigInteger, nullable=True),  # the active version when it started, if any
    sa.Column("start_time", utc_datetime, nullable=False),
    sa.Column("end_time", utc_datetime, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # queued | running | succeeded | failed
    sa.Column("events_scanned", sa.BigInteger, nullable=False),
    sa.Column("events_total", sa.BigInteger, nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("candidate_report", sa.LargeBinary, nullable=True),  # BacktestReport
    sa.Column("baseline_report", sa.LargeBinary, nullable=True),
    sa.Column("lease_owner", sa.String(128), nullable=True),
    sa.Column("lease_until", utc_datetime, nullable=True),
    sa.Column("create_time", utc_datetime, nullable=False),
    sa.Column("finish_time", utc_datetime, nullable=True),
    # The open ones, for the runners' claims: few rows, whatever the history.
    sa.Index("orchestrator_backtests_open", "create_time", postgresql_where=sa.text("state IN ('queued', 'running')"),
             sqlite_where=sa.text("state IN ('queued', 'running')")),
)
