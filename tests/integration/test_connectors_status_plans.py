"""The statements that settle deliveries after their send stay on their indexes on a table of 150,000 rows that grew
after its statistics were taken (or was never analyzed): a provider's status callback finds its delivery through
``connectors_deliveries_provider_message_id`` and writes it through the primary key. Plans are PostgreSQL's own
(auto_explain on the service's one pooled connection), as in ``test_connectors_plans.py``."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from overture.common.v1 import messaging_pb2
from overture_connectors.callbacks import CallbackIntake
from overture_connectors.plugin import StatusUpdate
from overture_runtime.clock import IdGenerator, SystemClock
from overture_runtime.db import Database, migrate

from .plans import AutoExplained, buffers, nodes
from .test_connectors_plans import _GROW, GROWN, SCENARIOS, TENANT

ROOT = Path(__file__).resolve().parents[2]


class _Reporting:
    """A connector whose every callback reports one message delivered (the signature is the sms kind's own test's)."""

    name = "fake"
    channel = messaging_pb2.CHANNEL_SMS
    rate_limit_per_second = 0.0

    def read_callback(self, *, tenant: str, headers: Mapping[str, str], body: bytes) -> list[StatusUpdate]:
        return [StatusUpdate(provider_message_id=body.decode(), reference="ovr_" + body.decode(), status="delivered")]


def _kind(query: str) -> str | None:
    if "connectors_deliveries" not in query:
        return None
    if query.lstrip().startswith("SELECT") and "provider_message_id IN" in query:
        return "callback lookup"
    if query.lstrip().startswith("UPDATE connectors_deliveries"):
        return "callback write"
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
    return [(n["Node Type"], n.get("Index Name")) for n in nodes(plan) if n.get("Relation Name") == "connectors_deliveries"
            and n["Node Type"] != "ModifyTable"]


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
    assert sorted(kind for kind, _ in plans.seen) == ["callback lookup", "callback lookup", "callback write"]
    for kind, plan in plans.seen:
        scans = _scans(plan)
        assert buffers(plan) <= 24, (kind, buffers(plan), scans)
        expected = "connectors_deliveries_provider_message_id" if kind == "callback lookup" else "connectors_deliveries_pkey"
        assert scans and all(index == expected for _, index in scans), (kind, scans)
