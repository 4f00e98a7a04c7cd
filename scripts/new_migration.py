"""Autogenerate a migration for one service from its tables.

    python scripts/new_migration.py rules "add decisions index"

The service's existing migrations are applied to a scratch SQLite database,
and Alembic compares the result with the service's ``tables.metadata``.
Review the generated file before committing it.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from alembic import command

from overture_runtime.db import _alembic_config, migrate

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    service, message = sys.argv[1], sys.argv[2]
    script = ROOT / "services" / service / f"overture_{service}" / "migrations"
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/scratch.db"
        asyncio.run(migrate(url, script_location=script, version_table=f"{service}_alembic_version"))
        cfg = _alembic_config(url, script, f"{service}_alembic_version")
        command.revision(cfg, message=message, autogenerate=True)


if __name__ == "__main__":
    main()
