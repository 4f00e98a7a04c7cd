"""The inbox's statements read only the rows they show or count, through their partial indexes, on
a table of 130,000 messages that grew after its statistics were taken (or that was never analyzed).

The plans are PostgreSQL's own ``EXPLAIN (ANALYZE, BUFFERS)`` of each statement as :class:`Inbox`
runs it (auto_explain on its one pooled connection, which made its prepared statements while the
table was small). The subject under test has 3,000 messages spread through the table, a third of
them archived and all but 40 read; another has 5,000 unread, past the count's cap.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from overture_connectors.inbox import UNREAD_CAP, Inbox
from overture_runtime.clock import IdGenerator, SystemClock
from overture_runtime.db import Database, migrate
from overture_runtime.redis import Keys

from .plans import AutoExplained, buffers, nodes

ROOT = Path(__file__).resolve().parents[2]
GROWN = 130_000
_GROW = """
INSERT INTO connectors_inbox_messages
SELECT CASE WHEN g % 7 = 0 THEN 'globex' ELSE 'acme' END,
       CASE WHEN g % 40 = 0 AND g <= 120000 THEN 'heavy' WHEN g > $2::int - 5000 THEN 'flood' ELSE 's' || (g % 20011) END,
       $1 || lpad(g::text, 9, '0'), $1 || g || ':send', 'Title ' || g, 'Body of message ' || g, '{}', 1, now(),
       CASE WHEN g % 40 = 0 AND g < 118400 THEN now() END,
       CASE WHEN g % 120 = 0 THEN now() END
FROM generate_series(1, $2::int) g
"""
SCENARIOS = {"never analyzed": None, "analyzed while empty": 0, "analyzed with 50 rows": 50}
"""How stale the statistics are: the rows the table held when ANALYZE ran (None: it never ran)."""
PAGE = 20
WRITE_BUFFERS = 20
"""Buffers one changed row may cost: the row, its new version and an entry in each index it stays in (measured 15)."""


def _kind(query: str) -> str | None:
    """Which of the inbox's statements *query* is."""
    if "connectors_inbox_messages" not in query:
        return None
    if query.lstrip().upper().startswith("UPDATE"):
        return "archive" if "archive_time=" in query.replace(" ", "") else "mark read"
    if "count(*)" in query:
        return "unread count"
    if "SELECT connectors_inbox_messages.message_id" in query:
        return "unread ids"
    if "ORDER BY connectors_inbox_messages.message_id DESC" in query:
        return "list after" if "message_id >" in query else "list before" if "message_id <" in query else "list"
    if "idempotency_key =" in query:
        return "by key"
    return f"unexpected: {query}"


async def _round(inbox: Inbox, tenant: str = "acme") -> None:
    """Every read and write the inbox serves, for the heavy subject."""
    page = await inbox.list(tenant, "heavy", limit=PAGE + 1)
    if page:
        await inbox.list(tenant, "heavy", limit=PAGE + 1, before=page[-1].message_id)
        await inbox.list(tenant, "heavy", limit=PAGE + 1, after=page[min(5, len(page) - 1)].message_id)
        await inbox.by_key(tenant, page[0].idempotency_key)
        await inbox.mark_read(tenant, "heavy", [page[0].message_id, page[-1].message_id])
        await inbox.archive(tenant, "heavy", [page[len(page) // 2].message_id])
    await inbox.unread_count(tenant, "heavy")
    await inbox.unread_count(tenant, "flood")


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_inbox_statements_read_only_their_rows_after_the_table_grew(database_url: str, scenario: str) -> None:
    """Listing a page (first, older, newer than an id) walks connectors_inbox_messages_listed backwards and stops at the page;
    the unread count (and mark all read's search) walks connectors_inbox_messages_unread and stops at the cap; marking or
    archiving given messages finds each by its id; a lookup by key uses its unique index. None scans the table, each stays
    within a few buffers per row it returns, and marking 4,250 messages read takes them 1,000 at a time."""
    await migrate(database_url, script_location=ROOT / "services" / "connectors" / "overture_connectors" / "migrations",
                  version_table="connectors_alembic_version")
    db = Database(database_url, pool_size=1, max_overflow=0)
    inbox = Inbox(db, None, Keys("t"), SystemClock(), IdGenerator())
    plans = AutoExplained(_kind)
    admin = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        analyzed_rows = SCENARIOS[scenario]
        if analyzed_rows is not None:
            await admin.execute(_GROW, "small-", analyzed_rows)
            await admin.execute("ANALYZE connectors_inbox_messages")
        await plans.attach(db)
        for _ in range(6):  # past PostgreSQL's five custom plans before it considers a generic one
            await _round(inbox)
        await admin.execute(_GROW, "m", GROWN)
        plans.recording = True
        await _round(inbox)
        marked = await inbox.mark_all_read("acme", "heavy")
        await asyncio.sleep(0)
        plans.recording = False
        flood = await inbox.mark_all_read("acme", "flood"), await inbox.unread_count("acme", "flood")
        total = await admin.fetchval("SELECT count(*) FROM connectors_inbox_messages")
    finally:
        await admin.close()
        await db.close()
    assert total >= GROWN and 0 < marked < 60 and flood[0] > 4 * UNREAD_CAP and flood[1] == 0
    kinds = sorted({kind for kind, _ in plans.seen})
    assert kinds == ["archive", "by key", "list", "list after", "list before", "mark read", "unread count", "unread ids"], kinds
    for kind, plan in plans.seen:
        scans = [(n["Node Type"], n.get("Index Name"), n.get("Actual Rows", 0)) for n in nodes(plan)
                 if (n.get("Relation Name") == "connectors_inbox_messages" or "Index Name" in n) and n["Node Type"] != "ModifyTable"]
        assert len(scans) == 1 and scans[0][0] != "Seq Scan", (kind, scans)
        (node, index, rows), used = scans[0], buffers(plan)
        if kind.startswith("list"):
            assert (node, index, plan_direction(plan)) == ("Index Scan", "connectors_inbox_messages_listed", "Backward"), (kind, scans)
            assert rows <= PAGE + 1, (kind, scans)
            assert used <= 2 * (PAGE + 1) + 10, (kind, used)
        elif kind in ("unread count", "unread ids"):
            assert index == "connectors_inbox_messages_unread" and rows <= UNREAD_CAP, (kind, scans)
            assert used <= 2 * rows + 10, (kind, used, rows)
        elif kind == "by key":
            assert index == "connectors_inbox_messages_key" and used <= 10, (kind, scans, used)
        else:  # mark read (also each message of mark all read), archive: one statement per id, finding its row by the id
            assert index in ("connectors_inbox_messages_unread", "connectors_inbox_messages_listed", "connectors_inbox_messages_pkey"), (
                kind, scans)
            assert rows <= 1 and used <= WRITE_BUFFERS + 10, (kind, scans, used)


def plan_direction(plan: dict[str, object]) -> str:
    """The scan direction of the plan's index scan."""
    return next(str(n.get("Scan Direction")) for n in nodes(plan) if "Index" in str(n["Node Type"]))
