"""A bounce finds its delivery through ``connectors_deliveries_provider_message_id``,
reading a few buffers, on a table of 120,000 rows that grew after ANALYZE."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import sqlalchemy as sa

from overture_connectors.tables import deliveries
from overture_runtime.db import migrate

from .plans import explain, nodes

ROOT = Path(__file__).resolve().parents[2]
_GROW = """
INSERT INTO connectors_deliveries
SELECT CASE WHEN g % 5 = 0 THEN 'globex' ELSE 'acme' END, 'k-' || g || ':send', 'd-' || g, 'smtp', 'email',
       's' || g, md5(g::text) || md5(g::text), 'sent', false, '<' || md5(g::text) || '@overture.test>', 1, '', now(), now()
FROM generate_series($1::int, $2::int) g
"""


async def test_a_bounce_finds_its_delivery_through_the_message_id_index(database_url: str) -> None:
    """The Message-ID lookup of a bounce is an index scan of connectors_deliveries_provider_message_id reading under 10 buffers."""
    await migrate(database_url, script_location=ROOT / "services" / "connectors" / "overture_connectors" / "migrations",
                  version_table="connectors_alembic_version")
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await conn.execute(_GROW, 1, 50)
        await conn.execute("ANALYZE connectors_deliveries")
        await conn.execute(_GROW, 51, 120_000)
        wanted = (await conn.fetchval("SELECT provider_message_id FROM connectors_deliveries WHERE idempotency_key = 'k-77777:send'"))
        t = deliveries
        plan = await explain(conn, sa.select(t).where((t.c.provider_message_id == wanted) & (t.c.channel == "email")).limit(1))
    finally:
        await conn.close()
    scans = [n for n in nodes(plan) if "Scan" in n["Node Type"]]
    assert [n.get("Index Name") for n in scans] == ["connectors_deliveries_provider_message_id"], plan
    assert plan["Shared Hit Blocks"] + plan.get("Shared Read Blocks", 0) < 10, plan
