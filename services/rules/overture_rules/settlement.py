"""Settling reservations: COMMIT just before the provider call, RELEASE if
the send fails for good (ADR 0006). The ledger says what became of each
reservation (a preempted or expired one cannot be committed), and the stored
record is marked with it. A batch is settled together: one read of the
records, one Redis round trip, one transaction for the marks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from redis.exceptions import RedisError

from overture.rules.v1 import decision_pb2
from overture_runtime.db import Database
from overture_runtime.errors import FieldViolation, InvalidArgument, NotFound, OvertureError, Unavailable

from .caps import CapLedger
from .decision_store import DecisionStore
from .scripts import ScriptChannel

__all__ = ["Settlement", "settle_many"]

D = decision_pb2
_RESERVING = (D.EVALUATION_MODE_RESERVE, D.EVALUATION_MODE_RESERVE_AND_COMMIT)


@dataclass(frozen=True)
class Settlement:
    """One COMMIT or RELEASE to make."""

    decision_id: str
    """The reserving decision to settle."""
    mode: decision_pb2.EvaluationMode.ValueType
    """COMMIT or RELEASE."""
    now: dt.datetime
    """The settlement time (an expired hold cannot be committed)."""


async def settle_many(
    db: Database, records: DecisionStore, ledger: CapLedger, channel: ScriptChannel, *, tenant: str, items: Sequence[Settlement],
) -> list[decision_pb2.Decision | OvertureError]:
    """COMMIT or RELEASE each item's reservation; per item, the record as it
    then stands, or why it could not be settled."""
    found = await records.load_many(tenant, list({i.decision_id for i in items}))
    results: list[decision_pb2.Decision | OvertureError | None] = [None] * len(items)
    todo: list[tuple[int, decision_pb2.Decision, bool]] = []
    for n, item in enumerate(items):
        decision = found.get(item.decision_id)
        if decision is None:
            results[n] = NotFound(f"decision {item.decision_id!r} does not exist", reason="DECISION_NOT_FOUND")
        elif decision.mode not in _RESERVING:
            results[n] = InvalidArgument(
                f"decision {item.decision_id!r} was made in {D.EvaluationMode.Name(decision.mode)} mode; "
                "only RESERVE and RESERVE_AND_COMMIT decisions can be settled",
                violations=[FieldViolation("decision_id", "not a reserving decision", "NOT_RESERVED")])
        elif decision.reservation_state != D.RESERVATION_STATE_HELD and not (
            item.mode == D.EVALUATION_MODE_RELEASE and decision.reservation_state == D.RESERVATION_STATE_COMMITTED
        ):
            results[n] = decision  # denied, deferred, or already settled: nothing (more) to do
        else:
            todo.append((n, decision, item.mode == D.EVALUATION_MODE_COMMIT))
    counted = [(n, d, commit) for n, d, commit in todo if d.cap_counters]
    states: dict[int, tuple[decision_pb2.ReservationState.ValueType, str]] = {}
    if counted:
        try:
            replies = await channel.run([ledger.settle_command(tenant, d.subject_id, d.decision_id, commit=commit, now=items[n].now)
                                         for n, d, commit in counted])
        except RedisError as error:
            unavailable = Unavailable("the frequency-cap store could not be reached; retry", reason="CAP_LEDGER_UNAVAILABLE",
                                      retry_after=dt.timedelta(seconds=1))
            unavailable.__cause__ = error
            for n, _, _ in counted:
                results[n] = unavailable
            todo = [t for t in todo if not t[1].cap_counters]
        else:
            for (n, _, _), reply in zip(counted, replies, strict=True):
                state, by = ledger.settled(reply)
                # UNSPECIFIED: the ledger pruned the reservation; it expired long ago.
                states[n] = (state if state != D.RESERVATION_STATE_UNSPECIFIED else D.RESERVATION_STATE_EXPIRED, by)
    for n, _, commit in todo:  # no cap counted these messages: nothing is held in the ledger
        states.setdefault(n, (D.RESERVATION_STATE_COMMITTED if commit else D.RESERVATION_STATE_RELEASED, ""))
    if todo:
        async with db.begin() as conn:
            marked = await records.mark_many(conn, tenant, [(d.decision_id, *states[n]) for n, d, _ in todo])
        for n, d, _ in todo:
            results[n] = marked.get(d.decision_id, d)
    return [r for r in results if r is not None]
