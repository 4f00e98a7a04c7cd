"""The decision's one Redis round trip, on real Redis and PostgreSQL: a
replica decides on the profile view it keeps only after Redis confirmed, in
the same call that counts the caps, that no write anywhere replaced it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from overture.rules.v1 import decision_pb2 as D
from overture_runtime.config import Settings

from .rules_support import cap, running_rules, spec


async def _commands_during(url: str, action: Callable[[], Awaitable[Any]]) -> list[str]:
    """The commands clients sent Redis while *action* ran (those scripts ran inside them excluded)."""
    watcher = aioredis.Redis.from_url(url)
    marker = aioredis.Redis.from_url(url)
    try:
        async with watcher.monitor() as monitor:
            await marker.echo("start")
            while (await monitor.next_command())["command"] != "ECHO start":
                pass
            await action()
            await marker.echo("end")
            sent = []
            while (entry := await monitor.next_command())["command"] != "ECHO end":
                if entry["client_type"] != "lua":
                    sent.append(str(entry["command"]).split(" ", 1)[0])
            return sent
    finally:
        await watcher.aclose()
        await marker.aclose()


async def test_a_decision_costs_one_redis_command(make_settings: Callable[..., Settings], throwaway_redis: Callable[[], str]) -> None:
    """Once a subject's view is kept, a capped RESERVE decision sends Redis exactly one command (the script that confirms the view and reserves)."""
    url = throwaway_redis()
    async with running_rules(make_settings, redis_url=url) as svc:
        await svc.publish("capped", spec(caps=[cap("daily", 5)]))
        await svc.consent("u")
        assert (await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE)).allowed
        decisions = []

        async def decide() -> None:
            decisions.append(await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE))

        assert await _commands_during(url, decide) == ["EVALSHA"]
        assert decisions[0].allowed and [c.count for c in decisions[0].cap_counters] == [1]


async def test_a_write_through_another_replica_is_seen_at_once(make_settings: Callable[..., Settings]) -> None:
    """A consent revoked through one replica denies the next decision of another replica that kept the subject's view."""
    async with running_rules(make_settings) as first, running_rules(make_settings) as second:
        await first.publish("email", spec())
        await first.consent("u")
        for _ in range(3):  # the first replica keeps the view
            assert (await first.evaluate(rule_set="email", subject_id="u")).allowed
        await second.consent("u", granted=False)
        revoked = await first.evaluate(rule_set="email", subject_id="u")
        assert not revoked.allowed and "revoked" in revoked.summary
        await second.consent("u")
        assert (await first.evaluate(rule_set="email", subject_id="u")).allowed


async def test_a_redis_that_lost_its_data_never_confirms_a_kept_view(make_settings: Callable[..., Settings], throwaway_redis: Callable[[], str]) -> None:
    """After Redis loses every key, a consent revoked through another replica still denies a replica that kept the granted view."""
    url = throwaway_redis()
    async with running_rules(make_settings, redis_url=url) as first, running_rules(make_settings, redis_url=url) as second:
        await first.publish("email", spec())
        await first.consent("u")
        assert (await first.evaluate(rule_set="email", subject_id="u")).allowed
        client = aioredis.Redis.from_url(url)
        try:
            await client.flushall()
        finally:
            await client.aclose()
        await second.consent("u", granted=False)
        assert not (await first.evaluate(rule_set="email", subject_id="u")).allowed


async def test_scripts_redis_forgot_are_loaded_again(make_settings: Callable[..., Settings], throwaway_redis: Callable[[], str]) -> None:
    """After SCRIPT FLUSH (or a Redis restart), decisions still count caps: the script is loaded again and the command resent."""
    url = throwaway_redis()
    async with running_rules(make_settings, redis_url=url) as svc:
        await svc.publish("capped", spec(caps=[cap("two", 2)]))
        await svc.consent("u")
        assert (await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE)).allowed
        client = aioredis.Redis.from_url(url)
        try:
            await client.script_flush()
        finally:
            await client.aclose()
        second = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE)
        third = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE)
        assert second.allowed and not third.allowed and "two" in third.summary


async def test_a_batch_naming_one_subject_twice_counts_both(make_settings: Callable[..., Settings]) -> None:
    """Two RESERVE requests for the same subject in one batch, against a cap of one, leave one allowed and one denied by the cap."""
    from overture.rules.v1 import rules_service_pb2 as R

    from .rules_support import EMAIL, MD

    async with running_rules(make_settings) as svc:
        await svc.publish("capped", spec(caps=[cap("one", 1)]))
        await svc.consent("u")
        reply = await svc.rules.EvaluateBatch(R.EvaluateBatchRequest(requests=[
            R.EvaluateRequest(rule_set="capped", subject_id="u", channel=EMAIL, mode=D.EVALUATION_MODE_RESERVE) for _ in range(2)
        ]), metadata=MD)
        assert sorted(r.decision.allowed for r in reply.results) == [False, True]


async def test_a_batch_racing_its_repeat_stores_each_decision_once(make_settings: Callable[..., Settings]) -> None:
    """Two identical batches of 150 requests with given decision ids, sent at once, store each decision once and both get the stored answer."""
    import asyncio

    from overture.rules.v1 import rules_service_pb2 as R

    from .rules_support import EMAIL, MD

    async with running_rules(make_settings) as svc:
        await svc.publish("email", spec())
        await svc.consent("u")
        batch = R.EvaluateBatchRequest(requests=[
            R.EvaluateRequest(rule_set="email", subject_id="u", channel=EMAIL, decision_id=f"race-{i}") for i in range(150)])
        first, second = await asyncio.gather(*(svc.rules.EvaluateBatch(batch, metadata=MD) for _ in range(2)))
        for a, b in zip(first.results, second.results, strict=True):
            assert a.decision == b.decision and a.decision.allowed
        async with svc.app.db.connect() as conn:
            import sqlalchemy as sa

            count = (await conn.execute(sa.text("SELECT count(*) FROM rules_decisions WHERE decision_id LIKE 'race-%'"))).scalar()
        assert count == 150
