"""Each service's Alembic migrations build exactly the schema its tables declare, on real PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from overture_connectors import tables as connectors_tables
from overture_ingest import tables as ingest_tables
from overture_orchestrator import tables as orchestrator_tables
from overture_rules import tables as rules_tables
from overture_runtime.db import migrate

SERVICES: dict[str, Any] = {"ingest": ingest_tables, "rules": rules_tables, "orchestrator": orchestrator_tables,
                            "connectors": connectors_tables}
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_migrations_match_the_tables(service: str, database_url: str) -> None:
    """Migrating an empty database gives the tables, columns, types, indexes and constraints of tables.py, no more, no less."""
    await migrate(database_url, script_location=ROOT / "services" / service / f"overture_{service}" / "migrations",
                  version_table=f"{service}_alembic_version")
    metadata: sa.MetaData = SERVICES[service].metadata
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            def diff(sync_conn: sa.Connection) -> list[Any]:
                context = MigrationContext.configure(sync_conn, opts={"compare_type": True, "version_table": f"{service}_alembic_version"})
                return list(compare_metadata(context, metadata))
            differences = await conn.run_sync(diff)
    finally:
        await engine.dispose()
    assert differences == []
