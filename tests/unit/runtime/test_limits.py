"""Unit tests of :mod:`overture_runtime.limits`: every column holds what the edge lets through."""

from __future__ import annotations

import sqlalchemy as sa

from overture_connectors import tables as connectors_tables
from overture_ingest import tables as ingest_tables
from overture_orchestrator import tables as orchestrator_tables
from overture_rules import tables as rules_tables
from overture_runtime import limits

METADATA = [m.metadata for m in (ingest_tables, rules_tables, orchestrator_tables, connectors_tables)]

# Columns that hold a request field under another name, or more than the field itself.
COLUMN_FIELDS = {"name": "journey", "rule_set": "rule_set", "step_id": "step_id", "trigger_event_type": "event_type",
                 "original_event_type": "event_type", "idempotency_key": "idempotency_key", "ref": "trigger_event_id"}
WIDER = {("rules_consents", "source"): limits.CONSENT_SOURCE_COLUMN}


def _string_columns() -> list[tuple[str, sa.Column[str]]]:
    return [(table.name, column) for metadata in METADATA for table in metadata.tables.values()
            for column in table.columns if isinstance(column.type, sa.String) and column.type.length]


def test_every_limited_column_holds_its_fields_limit() -> None:
    """A String(n) column named like a request field (or mapped to one) is at least that field's edge limit long."""
    short = []
    checked = 0
    for table, column in _string_columns():
        field = COLUMN_FIELDS.get(column.name, column.name)
        limit = WIDER.get((table, column.name)) or limits.STRING_LIMITS.get(field)
        if limit is None:
            continue
        checked += 1
        if column.type.length < limit:  # type: ignore[attr-defined]
            short.append(f"{table}.{column.name}: String({column.type.length}) < {limit}")  # type: ignore[attr-defined]
    assert not short, short
    assert checked > 20


def test_tenant_columns_hold_a_tenant() -> None:
    """Every tenant column is exactly TENANT characters wide, the limit tokens are configured with."""
    widths = {column.type.length for _, column in _string_columns() if column.name == "tenant"}  # type: ignore[attr-defined]
    assert widths == {limits.TENANT}
