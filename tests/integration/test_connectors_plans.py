"""Every statement the connectors service runs on ``connectors_deliveries``
stays on the right index, reading a few buffers per key, on a table of 150,000
rows that grew after its statistics were taken (or that was never analyzed).

The plans are PostgreSQL's own ``EXPLAIN (ANALYZE, BUFFERS)`` of each
statement as the service runs it: ``auto_explain`` (``log_analyze``,
``log_buffers``) is loaded into the one pooled connection the service uses,
and hands each plan back as a NOTICE. The connection made its prepared
statements while the table was small, as a service that started on an empty
database would have.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa

from overture.common.v1 import messaging_pb2
from overture.connectors.v1 import delivery_pb2
from overture_connectors.deliveries import MAX_BATCH, DeliveryService
from overture_connectors.resolutions import Resolutions
from overture_runtime.clock import IdGenerator, SystemClock
from overture_runtime.db import Database, migrate
from tests.unit.connectors.fakes import FakeConnector

from .plans import AutoExplained

ROOT = Path(__file__).resolve().parents[2]
TENANT = "acme"
GROWN = 150_000
"""Rows added after the statistics were taken: most in the tenant under test, the rest in another."""
BATCH = 20
PER_KEY_BUFFERS = 20
"""Buffers one key may cost. Measured: a lookup 4 to 6, a read 4 to 5 per key, a claim 11 per
key (the arbiter probe, the heap and both unique indexes), an outcome 7 to 15 per key. The
statements this replaced read 3,500 (a sequential scan) to 27,600 (the tenant's whole range
of connectors_deliveries_id) per lookup on the same table."""
_GROW = """
INSERT INTO connectors_deliveries
SELECT CASE WHEN g % 5 = 0 THEN 'globex' ELSE 'acme' END, 'grown-' || g || ':send', 'd-grown-' || g, 'fake', 'email',
       's' || g, md5(g::text) || md5(g::text), 'sent', false, '<' || g || '@fake>', 1, '', now(), now()
FROM generate_series(1, $1::int) g
"""
SCENARIOS = {"never analyzed": None, "analyzed while empty": 0, "analyzed with 50 rows": 50}
"""How stale the statistics are: the rows the table held when ANALYZE ran (None: it never ran)."""


def _message(key: str) -> delivery_pb2.Message:
    return delivery_pb2.Message(idempotency_key=key, channel=messaging_pb2.CHANNEL_EMAIL, subject_id=f"s-{key}",
                                address=f"{key.replace(':', '-')}@example.com",
                                content=delivery_pb2.MessageContent(subject="Hi", text_body="Hi"))


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _kind(query: str) -> str:
    """Which of the service's statements *query* is."""
    if "ON CONFLICT" in query and "'sending', false" in query:
        return "claim"
    if "ON CONFLICT" in query:
        return "finish"
    if "CROSS JOIN LATERAL" in query:
        return "read"
    if "connectors_deliveries.delivery_id =" in query:
        return "get by id"
    if "connectors_deliveries.idempotency_key =" in query:
        return "get by key"
    if "ORDER BY connectors_deliveries.delivery_id DESC" in query:
        return "list open" if "connectors_deliveries.status IN" in query else "list all"
    if "= ANY" in query:
        return "control"
    raise AssertionError(f"an unexpected statement on connectors_deliveries: {query}")


def _plans() -> AutoExplained:
    """The plans of the statements on connectors_deliveries."""
    return AutoExplained(lambda query: _kind(query) if "connectors_deliveries" in query else None)


async def _run(service: DeliveryService, fake: FakeConnector, prefix: str, size: int = BATCH) -> None:
    """One round of every hot operation: a new batch with one message failing for now, the same batch
    again (repeats, and a retake of the failed key), a single send, and both kinds of lookup."""
    keys = [f"{prefix}-{i}:send" for i in range(size)]
    fake.fail_for_now = {keys[0]}
    first = await service.send_many(TENANT, [_message(k) for k in keys])
    fake.fail_for_now = set()
    await service.send_many(TENANT, [_message(k) for k in keys])
    await service.send(TENANT, _message(f"{prefix}-single:send"))
    delivery = first[1].delivery
    assert delivery is not None
    await service.get(TENANT, idempotency_key=delivery.idempotency_key)
    await service.get(TENANT, delivery_id=delivery.delivery_id)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_hot_statements_use_their_index_after_the_table_grew(database_url: str, scenario: str) -> None:
    """Claims, repeats, outcomes and lookups each use the primary key (the delivery-id index for lookups by id), a bounded
    number of buffers per key, on a table that grew to 150,000 rows after its statistics; the obvious `= ANY` read does not."""
    await migrate(database_url, script_location=ROOT / "services" / "connectors" / "overture_connectors" / "migrations",
                  version_table="connectors_alembic_version")
    db = Database(database_url, pool_size=1, max_overflow=0)
    fake = FakeConnector()
    service = DeliveryService(db, {fake.name: fake}, {messaging_pb2.CHANNEL_EMAIL: fake.name}, SystemClock(), IdGenerator())
    plans = _plans()
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    admin = await asyncpg.connect(dsn)
    try:
        analyzed_rows = SCENARIOS[scenario]
        if analyzed_rows is not None:
            await admin.execute(_GROW, analyzed_rows)
            await admin.execute("ANALYZE connectors_deliveries")
        await plans.attach(db)
        for round_ in range(6):  # past PostgreSQL's five custom plans before it considers a generic one
            await _run(service, fake, f"warm{round_}")
        await admin.execute(_GROW.replace("'grown-'", "'big-'").replace("'d-grown-'", "'d-big-'"), GROWN)
        plans.recording = True
        await _run(service, fake, "hot")
        await _run(service, fake, "full", MAX_BATCH)
        async with db.connect() as conn:  # the control: the shape store.py avoids, for a full batch
            await conn.execute(sa.text("SELECT * FROM connectors_deliveries WHERE tenant = :tenant AND idempotency_key = ANY(:keys)"),
                               {"tenant": TENANT, "keys": [f"big-{i}:send" for i in range(1, 6 * MAX_BATCH, 6)]})
        await asyncio.sleep(0)
        plans.recording = False
    finally:
        await admin.close()
        await db.close()

    kinds = {kind for kind, _ in plans.seen}
    assert kinds == {"claim", "read", "finish", "get by id", "get by key", "control"}
    for kind, plan in plans.seen:
        nodes = list(_nodes(plan))
        buffers = plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)
        scans = [(n["Node Type"], n.get("Index Name")) for n in nodes if n.get("Relation Name") == "connectors_deliveries"
                 and n["Node Type"] != "ModifyTable"]
        if kind == "control":
            if analyzed_rows is None or analyzed_rows == 0:
                assert buffers > 1000, "the control should show what stale statistics do to the obvious shape"
            continue
        keys = max([1, *(n.get("Actual Rows", 0) for n in nodes if n["Node Type"] == "Function Scan")])
        assert buffers <= PER_KEY_BUFFERS * keys + 16, (kind, buffers, scans)
        assert all(node != "Seq Scan" for node, _ in scans), (kind, scans)
        if kind in ("claim", "finish"):
            assert plan["Node Type"] == "ModifyTable" and plan["Conflict Arbiter Indexes"] == ["connectors_deliveries_pkey"]
            assert scans == []  # rows are found through the arbiter, not by a planned scan
        elif kind == "get by id":
            assert scans == [("Index Scan", "connectors_deliveries_id")]
        else:
            assert scans == [("Index Scan", "connectors_deliveries_pkey")], (kind, scans)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_listing_in_doubt_deliveries_reads_only_them_after_the_table_grew(database_url: str, scenario: str) -> None:
    """ListDeliveries filtered on IN_DOUBT reads the partial index of open deliveries (a few buffers for a page, whatever the
    150,000 sent rows), and unfiltered it walks the tenant's delivery ids backwards, stopping at the page's end."""
    await migrate(database_url, script_location=ROOT / "services" / "connectors" / "overture_connectors" / "migrations",
                  version_table="connectors_alembic_version")
    db = Database(database_url, pool_size=1, max_overflow=0)
    resolutions = Resolutions(db, SystemClock(), IdGenerator())
    plans = _plans()
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    admin = await asyncpg.connect(dsn)
    try:
        analyzed_rows = SCENARIOS[scenario]
        if analyzed_rows is not None:
            await admin.execute(_GROW, analyzed_rows)
            await admin.execute("ANALYZE connectors_deliveries")
        await plans.attach(db)
        for _ in range(6):
            await resolutions.list(TENANT, status="in_doubt", limit=21)
            await resolutions.list(TENANT, limit=21)
        await admin.execute(_GROW.replace("'grown-'", "'big-'").replace("'d-grown-'", "'d-big-'"), GROWN)
        await admin.execute("UPDATE connectors_deliveries SET status = 'in_doubt' WHERE idempotency_key LIKE 'big-%0001:send'")
        plans.recording = True
        page = await resolutions.list(TENANT, status="in_doubt", limit=21)
        everything = await resolutions.list(TENANT, limit=21)
        await asyncio.sleep(0)
        plans.recording = False
    finally:
        await admin.close()
        await db.close()
    assert len(page) == 14 and {row.status for row in page} == {"in_doubt"}
    assert len(everything) == 21
    assert {kind for kind, _ in plans.seen} == {"list open", "list all"}
    for kind, plan in plans.seen:
        nodes = list(_nodes(plan))
        buffers = plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)
        scans = [(n["Node Type"], n.get("Index Name")) for n in nodes if n.get("Relation Name") == "connectors_deliveries"]
        expected = "connectors_deliveries_open" if kind == "list open" else "connectors_deliveries_id"
        assert scans == [("Index Scan Backward", expected)] or scans == [("Index Scan", expected)], (kind, scans)
        assert buffers <= 21 * 4 + 16, (kind, buffers)
