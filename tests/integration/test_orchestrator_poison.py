"""Poison is isolated (guarantee 7): a stream entry that keeps failing goes to
the dead-letter queue after N deliveries, never holds up the entries behind
it on its partition, and can be re-driven once what made it fail is fixed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from overture.common.v1 import event_pb2
from overture.orchestrator.v1 import journey_pb2
from overture.orchestrator.v1 import orchestrator_service_pb2 as O
from overture_runtime.config import Settings
from overture_runtime.redis import Keys
from tests.conftest import REDIS_URL, TENANT, admin_metadata
from tests.thinpath import eventually

from .cluster import running_cluster

MD = admin_metadata()
POISON_ID = "order-of-pat"
# Starting pat's run fails every time, as a data-dependent bug in a release
# would, until the fix (dropping this trigger) is deployed.
_BUG = """
CREATE FUNCTION refuse_pat() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.subject_id = 'pat' THEN RAISE EXCEPTION 'a bug that only pat meets'; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER refuse_pat BEFORE INSERT ON orchestrator_runs FOR EACH ROW EXECUTE FUNCTION refuse_pat();
"""


def _journey() -> journey_pb2.JourneySpec:
    spec = journey_pb2.JourneySpec(description="thank the buyer")
    spec.trigger.event.event_type = "order.completed"
    spec.steps.add(id="done").exit.SetInParent()
    return spec


async def test_a_poison_entry_is_dead_lettered_without_blocking_its_partition_and_redriven_once_fixed(
    make_settings: Callable[..., Settings], database_url: str, redis_namespace: str, tmp_path: Path,
) -> None:
    """An entry that fails every delivery is dead-lettered after the third, the entries after it on its partition start
    their runs meanwhile, and once the cause is fixed a re-drive starts its run exactly once."""

    def settings(**overrides: Any) -> Settings:
        return make_settings(consumer_reclaim_idle_seconds=0.3, consumer_max_deliveries=3, **overrides)

    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    async with running_cluster(settings, tmp_path / "mail") as c:
        await c.orchestrator.PublishJourney(O.PublishJourneyRequest(name="thanks", spec=_journey(), reason="poison"), metadata=MD)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(_BUG)
        finally:
            await conn.close()
        redis = aioredis.Redis.from_url(REDIS_URL)
        stream = Keys(redis_namespace).stream("events", 0)
        try:
            # The poison entry first, then good ones, all on one partition.
            for event_id, subject in [(POISON_ID, "pat"), *((f"good-{i}", f"g{i}") for i in range(5))]:
                event = event_pb2.Event(event_id=event_id, event_type="order.completed", subject_id=subject)
                await redis.xadd(stream, {"tenant": TENANT, "event_id": event_id[:32], "event": event.SerializeToString()})
        finally:
            await redis.aclose()

        async def good_started() -> list[Any] | None:
            found = [(await c.orchestrator.ListRuns(O.ListRunsRequest(subject_id=f"g{i}"), metadata=MD)).runs for i in range(5)]
            return [runs[0] for runs in found] if all(len(runs) == 1 for runs in found) else None

        good = await eventually(good_started, what="the runs of the entries behind the poison one")

        async def poisoned() -> list[O.PoisonEvent] | None:
            listed = await c.orchestrator.ListDeadLetters(O.ListDeadLettersRequest(kind=O.DEAD_LETTER_KIND_EVENT), metadata=MD)
            return list(listed.poison_events) or None

        (entry,) = await eventually(poisoned, within=30, what="the poison entry in the dead-letter queue")
        assert entry.attempts == 3 and entry.event.subject_id == "pat" and entry.last_error
        # The entries behind it did not wait for it to be dead-lettered.
        assert max(r.create_time.ToDatetime() for r in good) < entry.create_time.ToDatetime()
        refused = await c.orchestrator.RedriveDeadLetters(O.RedriveDeadLettersRequest(entry_ids=[entry.entry_id], reason="not yet"),
                                                          metadata=MD)
        assert (refused.redriven_count, [r.reason for r in refused.rejections]) == (0, ["STILL_FAILING"])

        conn = await asyncpg.connect(dsn)
        try:  # the fix is deployed
            await conn.execute("DROP TRIGGER refuse_pat ON orchestrator_runs")
        finally:
            await conn.close()
        for attempt in range(2):
            redriven = await c.orchestrator.RedriveDeadLetters(O.RedriveDeadLettersRequest(entry_ids=[entry.entry_id], reason="fixed"),
                                                               metadata=MD)
            if attempt == 0:
                assert (redriven.redriven_count, list(redriven.rejections)) == (1, [])
            else:  # it left the queue: a second re-drive finds nothing
                assert [r.reason for r in redriven.rejections] == ["ENTRY_NOT_FOUND"]
        runs = (await c.orchestrator.ListRuns(O.ListRunsRequest(subject_id="pat"), metadata=MD)).runs
        assert len(runs) == 1
        assert await poisoned() is None
