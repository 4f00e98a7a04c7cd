"""A database connection that dies is found on use, not before each checkout.

The pool does not ping a connection before handing it out (that cost three
round trips per checkout). These tests cut every connection a service holds
to its database (this test's own database, so nothing shared is touched),
and check that a call then fails at most once, as UNAVAILABLE with a retry
delay (never INTERNAL), that the next call works, and that a caller on the
services' retrying channel never sees the cut.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

import asyncpg
import grpc
import pytest

from overture.rules.v1 import rules_service_pb2, rules_service_pb2_grpc
from overture_runtime.clients import open_channel
from overture_runtime.config import Settings
from overture_runtime.db import Database, storage_unavailable
from tests.conftest import PG_ADMIN, admin_metadata
from tests.integration.rules_support import reason_of, running_rules, spec

pytestmark = pytest.mark.asyncio
MD = admin_metadata()


async def _cut_connections(database_url: str) -> int:
    """Terminate every session on *database_url*'s database; returns how many there were."""
    name = urlsplit(database_url).path.lstrip("/")
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        return int(await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", name))
    finally:
        await admin.close()


async def test_a_cut_connection_fails_one_call_as_unavailable_and_the_next_call_works(
    make_settings: Callable[..., Settings], database_url: str,
) -> None:
    async with running_rules(make_settings) as rules:
        await rules.publish("marketing", spec())
        assert [r.rule_set for r in (await rules.rules.ListRuleSets(rules_service_pb2.ListRuleSetsRequest(), metadata=MD)).rule_sets] == ["marketing"]
        assert await _cut_connections(database_url) >= 1
        outcomes: list[str] = []
        for _ in range(3):
            try:
                listed = await rules.rules.ListRuleSets(rules_service_pb2.ListRuleSetsRequest(), metadata=MD)
                assert [r.rule_set for r in listed.rule_sets] == ["marketing"]
                outcomes.append("OK")
            except grpc.aio.AioRpcError as error:
                assert (error.code(), reason_of(error)) == (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE"), error.details()
                outcomes.append("UNAVAILABLE")
        # The pool dropped every connection older than the cut: one failed call at most.
        assert outcomes in (["OK", "OK", "OK"], ["UNAVAILABLE", "OK", "OK"])


async def test_a_caller_on_the_retrying_channel_does_not_see_the_cut(make_settings: Callable[..., Settings], database_url: str) -> None:
    settings = make_settings()
    async with running_rules(make_settings) as rules:
        await rules.publish("marketing", spec())
        async with open_channel(rules.address, settings) as channel:
            stub = rules_service_pb2_grpc.RulesServiceStub(channel)
            for _ in range(3):
                assert await _cut_connections(database_url) >= 1
                listed = await stub.ListRuleSets(rules_service_pb2.ListRuleSetsRequest(), metadata=MD)
                assert [r.rule_set for r in listed.rule_sets] == ["marketing"]


async def test_reads_and_transactions_after_a_cut_fail_once_then_work(database_url: str) -> None:
    db = Database(database_url, pool_size=3, max_overflow=0)
    try:
        async with db.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE probe (n int)")
            await conn.exec_driver_sql("INSERT INTO probe VALUES (1)")
        for use in ("read", "transaction"):
            # fill the pool, so that every connection in it is cut
            async with db.connect() as a, db.connect() as b, db.connect() as c:
                for conn in (a, b, c):
                    assert (await conn.exec_driver_sql("SELECT n FROM probe")).scalar() == 1
            await _cut_connections(database_url)
            with pytest.raises(Exception) as cut:
                if use == "read":
                    async with db.connect() as conn:
                        await conn.exec_driver_sql("SELECT n FROM probe")
                else:
                    async with db.begin() as conn:
                        await conn.exec_driver_sql("UPDATE probe SET n = 1")
            assert storage_unavailable(cut.value), repr(cut.value)
            async with db.begin() as conn:
                await conn.exec_driver_sql("UPDATE probe SET n = n")
            async with db.connect() as conn:
                assert (await conn.exec_driver_sql("SELECT n FROM probe")).scalar() == 1
    finally:
        await db.close()


async def test_a_read_connection_takes_no_transaction(database_url: str) -> None:
    """Reads on :meth:`Database.connect` run outside a transaction (no BEGIN/ROLLBACK round trips); begin() keeps one."""
    db = Database(database_url)
    try:
        async with db.connect() as conn:
            # outside a transaction, each statement is its own: two xact ids in a row differ
            x = (await conn.exec_driver_sql("SELECT pg_current_xact_id()::text")).scalar()
            y = (await conn.exec_driver_sql("SELECT pg_current_xact_id()::text")).scalar()
            assert x != y
        async with db.begin() as conn:
            x = (await conn.exec_driver_sql("SELECT pg_current_xact_id()::text")).scalar()
            y = (await conn.exec_driver_sql("SELECT pg_current_xact_id()::text")).scalar()
            assert x == y
    finally:
        await db.close()
