"""Settling a reservation: COMMIT just before the provider call, RELEASE if
the send fails for good (ADR 0006). The ledger says what became of the
reservation (a preempted or expired one cannot be committed), and the stored
record is marked with it."""

from __future__ import annotations

import datetime as dt

from redis.exceptions import RedisError

from overture.rules.v1 import decision_pb2
from overture_runtime.db import Database
from overture_runtime.errors import FieldViolation, InvalidArgument, NotFound, Unavailable

from .caps import CapLedger
from .decision_store import DecisionStore

__all__ = ["settle"]

D = decision_pb2


async def settle(
    db: Database, records: DecisionStore, ledger: CapLedger, *, tenant: str, decision_id: str,
    mode: decision_pb2.EvaluationMode.ValueType, now: dt.datetime,
) -> decision_pb2.Decision:
    """COMMIT or RELEASE (*mode*) the reservation of a RESERVE decision; the record as it then stands."""
    found = await records.load_many(tenant, [decision_id])
    if decision_id not in found:
        raise NotFound(f"decision {decision_id!r} does not exist", reason="DECISION_NOT_FOUND")
    decision = found[decision_id]
    if decision.mode != D.EVALUATION_MODE_RESERVE:
        raise InvalidArgument(
            f"decision {decision_id!r} was made in {D.EvaluationMode.Name(decision.mode)} mode; only RESERVE decisions can be settled",
            violations=[FieldViolation("decision_id", "not a RESERVE decision", "NOT_RESERVED")],
        )
    if decision.reservation_state != D.RESERVATION_STATE_HELD and not (
        mode == D.EVALUATION_MODE_RELEASE and decision.reservation_state == D.RESERVATION_STATE_COMMITTED
    ):
        return decision  # denied, deferred, or already settled: nothing (more) to do
    commit = mode == D.EVALUATION_MODE_COMMIT
    by = ""
    if decision.cap_counters:
        try:
            state, by = await ledger.settle(tenant, decision.subject_id, decision_id, commit=commit, now=now)
        except RedisError as error:
            raise Unavailable("the frequency-cap store could not be reached; retry", reason="CAP_LEDGER_UNAVAILABLE",
                              retry_after=dt.timedelta(seconds=1)) from error
        if state == D.RESERVATION_STATE_UNSPECIFIED:
            state = D.RESERVATION_STATE_EXPIRED  # pruned: it expired long ago
    else:  # no cap counted this message: nothing is held in the ledger
        state = D.RESERVATION_STATE_COMMITTED if commit else D.RESERVATION_STATE_RELEASED
    async with db.begin() as conn:
        marked = await records.mark(conn, tenant, decision_id, state, preempted_by=by)
    return marked or decision
