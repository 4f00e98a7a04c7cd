"""The statements that settle deliveries after their send stay on their indexes on a table of 150,000 rows that grew
after its statistics were taken (or was never analyzed): a provider's status callback finds its delivery through
``connectors_deliveries_provider_message_id``; the sweeper finds abandoned claims and due in-doubt deliveries through
the partial indexes ``connectors_deliveries_claimed`` and ``connectors_deliveries_recheck``; each writes through the
primary key. Plans are PostgreSQL's own (auto_explain on the service's one pooled connection), as in
``test_connectors_plans.py``."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from overture.common.v1 import messaging_pb2
from overture_connectors.callbacks import CallbackIntake
from overture_connectors.dispatch import Dispatcher
from overture_connectors.plugin import StatusUpdate
from overture_connectors.sweeper import Sweeper
from overture_runtime.clock import IdGenerator, SystemClock
from overture_runtime.config import Settings
from overture_runtime.db import Database, migrate

from .plans import AutoExplained, buffers, nodes
from .test_connectors_plans import _GROW, GROWN, SCENARIOS, TENANT

ROOT = Path(__file__).resolve().parents[2]


class _Reporting:
    """A connector whose every callback reports one message delivered (the signature is the sms kind's own test's), and whose
    status lookup never knows."""

    name = "fake"
    channel = messaging_pb2.CHANNEL_SMS
    rate_limit_per_second = 0.0
    status_lookup = True

    async def status(self, provider_message_id: str) -> str | None:
        return None

    def read_callback(self, *, tenant: str, headers: Mapping[str, str], body: bytes) -> list[StatusUpdate]:
        return [StatusUpdate(provider_message_id=body.decode(), reference="ovr_" + body.decode(), status="delivered")]


def _kind(query: str) -> str | None:
    if "connectors_deliveries" not in query:
        return None
    if query.lstrip().startswith("SELECT") and "provider_message_id IN" in query:
        return "callback lookup"
    if "SKIP LOCKED" in query:
        return "take stale claims" if "ORDER BY connectors_deliveries.update_time" in query else "take due rechecks"
    if query.lstrip().startswith("UPDATE connectors_deliveries"):
        return "write"
    return None


async def _grown(database_url: str, scenario: str) -> tuple[Database, asyncpg.Connection]:
    await migrate(database_url, script_location=ROOT / "services" / "connectors" / "overture_connectors" / "migrations",
                  version_table="connectors_alembic_version")
    admin = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    analyzed_rows = SCENARIOS[scenario]
    if analyzed_rows is not None:
        await admin.execute(_GROW, analyzed_rows)
        await admin.execute("ANALYZE connectors_deliveries")
    return Database(database_url, pool_size=1, max_overflow=0), admin


def _scans(plan: dict[str, Any]) -> list[tuple[str, str | None]]:
    """The reads of connectors_deliveries: each scan with its index (a bitmap scan by its index scans)."""
    return [(n["Node Type"], n.get("Index Name")) for n in nodes(plan)
            if (n.get("Relation Name") == "connectors_deliveries" and n["Node Type"] not in ("ModifyTable", "Bitmap Heap Scan"))
            or str(n.get("Index Name", "")).startswith("connectors_deliveries")]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_a_status_callback_finds_and_writes_its_delivery_through_indexes(database_url: str, scenario: str) -> None:
    """A callback's lookup by provider message id (or our reference) reads the provider-message-id index, and its write the
    primary key, a few buffers each, on a table grown to 150,000 rows after its statistics."""
    db, admin = await _grown(database_url, scenario)
    intake = CallbackIntake(db=db, connectors={"fake": _Reporting()}, clock=SystemClock(), ids=IdGenerator())  # type: ignore[dict-item]
    plans = AutoExplained(_kind)
    try:
        await plans.attach(db)
        await admin.execute(_GROW.replace("'grown-'", "'warm-'").replace("'d-grown-'", "'d-warm-'").replace("'sent'", "'in_doubt'"), 12)
        for i in (1, 2, 3, 4, 6, 7):  # past PostgreSQL's five custom plans before it considers a generic one (5 is globex's)
            assert await intake.take(TENANT, provider="fake", headers={}, body=f"<{i}@fake>".encode())
        await admin.execute(_GROW.replace("'grown-'", "'big-'").replace("'d-grown-'", "'d-big-'"), GROWN)
        plans.recording = True
        assert await intake.take(TENANT, provider="fake", headers={}, body=b"<1001@fake>")
        assert not await intake.take(TENANT, provider="fake", headers={}, body=b"<no-such@fake>")
        await asyncio.sleep(0)
        plans.recording = False
    finally:
        await admin.close()
        await db.close()
    assert sorted(kind for kind, _ in plans.seen) == ["callback lookup", "callback lookup", "write"]
    for kind, plan in plans.seen:
        scans = _scans(plan)
        assert buffers(plan) <= 24, (kind, buffers(plan), scans)
        expected = "connectors_deliveries_provider_message_id" if kind == "callback lookup" else "connectors_deliveries_pkey"
        assert scans and all(index == expected for _, index in scans), (kind, scans)


_ABANDON = """
INSERT INTO connectors_deliveries
SELECT 'acme', $1::text || g || ':send', 'd-' || $1::text || g, 'fake', 'email', 's' || g, md5(g::text) || md5(g::text),
       $2::text, false, '<' || $1::text || g || '@fake>', 1, '', now() - interval '1 hour', now() - interval '1 hour', NULL, 0,
       CASE WHEN $2::text = 'in_doubt' THEN now() - interval '1 minute' END, 0
FROM generate_series(1, $3::int) g
"""


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_the_sweeper_finds_its_rows_through_partial_indexes_after_the_table_grew(database_url: str, scenario: str) -> None:
    """A sweep takes abandoned claims and due in-doubt deliveries through their partial indexes (joined back by primary key), and
    writes each through the primary key, a bounded number of buffers each, whatever the 150,000 sent rows around them."""
    db, admin = await _grown(database_url, scenario)
    config = Settings(database_url=database_url, redis_url="redis://unused", connector_recheck_attempts=50)
    fake = _Reporting()
    sweeper = Sweeper(db=db, connectors={"fake": fake}, dispatcher=Dispatcher({"fake": fake}, {}, SystemClock()),  # type: ignore[dict-item]
                      clock=SystemClock(), ids=IdGenerator(), settings=config)
    plans = AutoExplained(_kind)
    try:
        await plans.attach(db)
        for round_ in range(6):  # past PostgreSQL's five custom plans before it considers a generic one
            await admin.execute(_ABANDON, f"warm{round_}-s-", "sending", 2)
            await admin.execute(_ABANDON, f"warm{round_}-d-", "in_doubt", 2)
            assert (await sweeper.sweep()).rechecked == 2
        await admin.execute(_GROW.replace("'grown-'", "'big-'").replace("'d-grown-'", "'d-big-'"), GROWN)
        await admin.execute(_ABANDON, "hot-s-", "sending", 5)
        await admin.execute(_ABANDON, "hot-d-", "in_doubt", 5)
        plans.recording = True
        swept = await sweeper.sweep()
        await asyncio.sleep(0)
        plans.recording = False
    finally:
        await admin.close()
        await db.close()
    assert (swept.stale_claims, swept.rechecked) == (5, 5)
    kinds = [kind for kind, _ in plans.seen]
    assert sorted(set(kinds)) == ["take due rechecks", "take stale claims", "write"] and kinds.count("write") == 10
    for kind, plan in plans.seen:
        scans = _scans(plan)
        partial = {"take stale claims": "connectors_deliveries_claimed", "take due rechecks": "connectors_deliveries_recheck"}
        used = {index for _, index in scans}
        assert all(node != "Seq Scan" for node, _ in scans), (kind, scans)
        if kind in partial:  # the partial index holds only the open rows; the update may find them again by it or by key
            assert partial[kind] in used and used <= {partial[kind], "connectors_deliveries_pkey"}, (kind, scans)
        else:  # an exact probe: by primary key, or by (tenant, delivery_id) in the open deliveries' index
            assert used <= {"connectors_deliveries_pkey", "connectors_deliveries_open"} and len(used) == 1, (kind, scans)
        assert buffers(plan) <= (40 * 5 + 16 if kind in partial else 24), (kind, buffers(plan), scans)  # 5 rows taken: ~25 buffers each
