"""ListProfiles reads only a page's rows on tables that grew after their
statistics were taken (autovacuum is off here), once the services' own
ANALYZE of grown tables has run: 150,000 profiles, a segment of 100,000 of
them and one of 50."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from overture_rules.profile_pages import page_query
from overture_runtime.db import SERVER_SETTINGS, Database, analyze_grown, migrate

from .plans import explain, nodes

ROOT = Path(__file__).resolve().parents[2]


def _buffers(node: dict[str, object]) -> int:
    return int(node.get("Shared Hit Blocks", 0)) + int(node.get("Shared Read Blocks", 0))  # type: ignore[call-overload]


async def test_a_page_of_a_segment_or_of_every_profile_reads_only_its_rows(database_url: str) -> None:
    """A page of 100 from a 100,000-member segment, from a 50-member one, or of all 150,000 profiles, walks a primary key and
    reads only the page's rows."""
    await migrate(database_url, script_location=ROOT / "services/rules/overture_rules/migrations", version_table="rules_alembic_version")
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1), server_settings=dict(SERVER_SETTINGS))
    db = Database(database_url, pool_size=1, max_overflow=0)
    try:
        await conn.execute("ANALYZE rules_profiles; ANALYZE rules_segment_members")  # statistics of empty tables
        await conn.execute("""
            INSERT INTO rules_profiles SELECT 'acme', 's' || lpad(g::text, 6, '0'), '{}', '[]', '[]', '', g % 1000 = 0, now(), now(), '[]'
            FROM generate_series(1, 150000) g;
            INSERT INTO rules_segment_members SELECT 'acme', 'big', 's' || lpad(g::text, 6, '0') FROM generate_series(1, 100000) g;
            INSERT INTO rules_segment_members SELECT 'acme', 'small', 's' || lpad((g * 2999)::text, 6, '0') FROM generate_series(1, 50) g;
            INSERT INTO rules_segment_members SELECT 'other', 'big', 's' || g FROM generate_series(1, 20000) g;
        """)
        assert set(await analyze_grown(db, prefix="rules")) >= {"rules_profiles", "rules_segment_members"}
        for segment, after, expected in (("big", "s050000", 100), ("small", "", 50), ("", "s070000", 100)):
            plan = await explain(conn, page_query(tenant="acme", segment=segment, after=after, limit=100))
            scans = {(n["Node Type"], n.get("Index Name")) for n in nodes(plan) if "Scan" in n["Node Type"]}
            assert all(kind in ("Index Scan", "Index Only Scan") for kind, _ in scans), (segment, scans)
            assert {name for _, name in scans} <= {"rules_segment_members_pkey", "rules_profiles_pkey"}, scans
            assert plan["Actual Rows"] == expected
            for node in nodes(plan):  # each scan reads the page's rows (and an erased one or so), never the segment's
                if "Scan" in node["Node Type"]:
                    assert node["Actual Rows"] * node["Actual Loops"] <= expected + 1, (segment, node["Node Type"], plan)
            # About seven buffer visits per row (two index descents and a heap page); a scan of
            # the big segment's members would visit thousands.
            assert _buffers(plan) < 10 * expected, (segment, _buffers(plan))
    finally:
        await conn.close()
        await db.close()
