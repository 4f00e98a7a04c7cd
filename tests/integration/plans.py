"""Checking a statement's plan on a table that grew after its statistics were
taken: the statement as SQLAlchemy compiles it for PostgreSQL, with its
values inlined (the custom plan the services get under ``plan_cache_mode =
force_custom_plan``), explained with ``ANALYZE`` and ``BUFFERS``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import asyncpg
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql import ClauseElement

__all__ = ["explain", "nodes"]


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of *plan*, depth first."""
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


async def explain(conn: asyncpg.Connection, statement: ClauseElement) -> dict[str, Any]:
    """The executed plan of *statement* (its top node, with buffers)."""
    sql = str(statement.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
    rows = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}")
    return dict(json.loads(rows)[0]["Plan"])
