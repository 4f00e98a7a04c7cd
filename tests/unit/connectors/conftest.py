"""What the connectors unit tests share: a migrated SQLite database (what ``overture dev`` runs), the clock, messages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from overture.common.v1 import messaging_pb2
from overture.connectors.v1 import delivery_pb2
from overture_runtime.clock import ManualClock
from overture_runtime.db import Database, migrate

MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "connectors" / "overture_connectors" / "migrations"


def message(key: str, **fields: object) -> delivery_pb2.Message:
    """An email message with idempotency key *key*."""
    values: dict[str, object] = dict(idempotency_key=key, channel=messaging_pb2.CHANNEL_EMAIL, subject_id=f"s-{key}",
                                     address="a@example.com", content=delivery_pb2.MessageContent(subject="Hi", text_body="Hi"))
    values.update(fields)
    return delivery_pb2.Message(**values)  # type: ignore[arg-type]


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated SQLite database."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'connectors.db'}"
    await migrate(url, script_location=MIGRATIONS, version_table="connectors_alembic_version")
    database = Database(url)
    yield database
    await database.close()


@pytest.fixture
def clock() -> ManualClock:
    """The injected clock."""
    return ManualClock()
