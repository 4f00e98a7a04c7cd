"""Decision records written after the answer (``OVERTURE_DECISION_WRITES=async``),
on real PostgreSQL and Redis: a reservation settled before its record is in
the table is stored settled, whether its record was still queued or was
being inserted when the settlement came."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from overture.rules.v1 import decision_pb2 as D
from overture_runtime.config import Settings

from .rules_support import cap, running_rules, spec


async def test_reservations_settled_before_their_records_are_stored_are_stored_settled(make_settings: Callable[..., Settings]) -> None:
    """One record is being inserted (the insert is held back) and one is queued behind it when both are committed:
    both answers and both stored rows say COMMITTED."""
    async with running_rules(make_settings, decision_writes="async") as svc:
        await svc.publish("capped", spec(caps=[cap("five", 5)]))
        await svc.consent("u")
        writer = svc.app.decider._records._writer  # the race needs the insert held at a known point
        insert = writer._insert
        entered, release = asyncio.Event(), asyncio.Event()

        async def held_back(rows: list[dict[str, Any]]) -> Any:
            entered.set()
            await release.wait()
            return await insert(rows)

        writer._insert = held_back
        flying = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE, decision_id="flying")
        await entered.wait()  # its group is being inserted
        queued = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE, decision_id="queued")
        assert flying.reservation_state == queued.reservation_state == D.RESERVATION_STATE_HELD
        commits = asyncio.gather(*(svc.evaluate(decision_id=d, mode=D.EVALUATION_MODE_COMMIT) for d in ("flying", "queued")))
        await asyncio.sleep(0.2)  # let both settlements reach the records (no assertion rests on this)
        release.set()
        assert [d.reservation_state for d in await commits] == [D.RESERVATION_STATE_COMMITTED] * 2
        stored: dict[str, tuple[str, bytes]] = {}
        while len(stored) < 2:  # the queued record is flushed after the writer's delay
            async with svc.app.db.connect() as conn:
                rows = await conn.execute(sa.text(
                    "SELECT decision_id, reservation_state, record FROM rules_decisions WHERE decision_id IN ('flying', 'queued')"))
                stored = {r.decision_id: (r.reservation_state, r.record) for r in rows}
            await asyncio.sleep(0.02)
        for decision_id, (state, record) in stored.items():
            assert state == "committed", decision_id
            assert D.Decision.FromString(record).reservation_state == D.RESERVATION_STATE_COMMITTED, decision_id
        again = await svc.evaluate(decision_id="flying", mode=D.EVALUATION_MODE_COMMIT)
        assert again.reservation_state == D.RESERVATION_STATE_COMMITTED
