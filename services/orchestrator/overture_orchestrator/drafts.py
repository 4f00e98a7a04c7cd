"""Journey drafts: one mutable working copy per journey, never run.

A draft is where a journey is edited before it is published: saving
replaces it, and it may be unfinished. It gets every check PublishJourney
makes (the definition, :func:`.definition.compile_journey`, and what it
names in other services, the reference check) but its problems are kept
with it and returned, not refused; a reference that cannot be checked now
(the rules service is down) is a warning. The result is as of the save.
A journey may have a draft before its first version. Publishing the
draft's content (the same digest) discards the draft, in the publish's
own transaction; publishing something else keeps it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from overture.common.v1 import field_violation_pb2
from overture.orchestrator.v1 import journey_pb2, orchestrator_service_pb2
from overture_runtime.clock import Clock
from overture_runtime.db import Database, insert_ignore
from overture_runtime.errors import FieldViolation, InvalidArgument, NotFound, Unavailable
from overture_runtime.protojson import canonical_json, digest, from_json

from .definition import compile_journey
from .tables import journey_drafts

__all__ = ["MAX_DRAFT_BYTES", "Drafts", "discard_published"]

MAX_DRAFT_BYTES = 1024 * 1024
"""The largest draft kept, as canonical JSON."""

ReferenceCheck = Callable[[str, journey_pb2.JourneySpec], Awaitable[None]]
"""Raises InvalidArgument for a name the spec uses that does not exist,
Unavailable when that cannot be checked (``references.RuleSetCheck.check``)."""


class Drafts:
    """Drafts of all tenants."""

    def __init__(self, db: Database, clock: Clock, *, references: ReferenceCheck | None) -> None:
        self._db = db
        self._clock = clock
        self._references = references

    async def save(self, *, tenant: str, name: str, spec: journey_pb2.JourneySpec, author: str) -> orchestrator_service_pb2.JourneyDraft:
        """Check *spec* and keep it, with its problems and warnings, as the draft of *name*."""
        content = canonical_json(spec)
        if len(content.encode()) > MAX_DRAFT_BYTES:
            raise InvalidArgument("the draft is too large", violations=[
                FieldViolation("spec", f"a draft holds at most {MAX_DRAFT_BYTES} bytes of JSON", "TOO_LARGE")])
        problems, warnings = await self.check(tenant, spec)
        values: dict[str, Any] = dict(spec=content, digest=digest(spec), problems=[_data(p) for p in problems],
                                      warnings=[_data(w) for w in warnings], author=author, update_time=self._clock.now())
        d = journey_drafts
        async with self._db.begin() as conn:
            inserted = await conn.execute(insert_ignore(conn, d, index_elements=["tenant", "name"]).values(tenant=tenant, name=name, **values))
            if not inserted.rowcount:  # the journey has a draft: this save replaces it
                await conn.execute(d.update().where((d.c.tenant == tenant) & (d.c.name == name)).values(**values))
            row = (await conn.execute(sa.select(d).where((d.c.tenant == tenant) & (d.c.name == name)))).one()
        return _proto(row)

    async def get(self, *, tenant: str, name: str) -> orchestrator_service_pb2.JourneyDraft:
        """The draft of *name*; NotFound if it has none."""
        d = journey_drafts
        async with self._db.connect() as conn:
            row = (await conn.execute(sa.select(d).where((d.c.tenant == tenant) & (d.c.name == name)))).first()
        if row is None:
            raise NotFound(f"journey {name!r} has no draft", reason="DRAFT_NOT_FOUND")
        return _proto(row)

    async def check(self, tenant: str, spec: journey_pb2.JourneySpec) -> tuple[list[FieldViolation], list[FieldViolation]]:
        """What PublishJourney would refuse in *spec*, and what it would only
        warn about. All problems at once: the definition's and the references'."""
        compiled, problems = compile_journey(spec)
        warnings = list(compiled.warnings) if compiled is not None else []
        if self._references is not None:
            try:
                await self._references(tenant, spec)
            except InvalidArgument as error:
                problems = [*problems, *error.violations]
            except Unavailable as error:
                warnings.append(FieldViolation("spec.rule_set", f"not checked: {error.message}", "NOT_CHECKED"))
        return list(problems), warnings


async def discard_published(conn: AsyncConnection, *, tenant: str, name: str, digest: str) -> None:
    """Delete the draft of *name* if it holds the content with *digest*: it was just published."""
    d = journey_drafts
    await conn.execute(d.delete().where((d.c.tenant == tenant) & (d.c.name == name) & (d.c.digest == digest)))


def _data(violation: FieldViolation) -> dict[str, str]:
    return {"field": violation.field, "description": violation.description, "reason": violation.reason}


def _proto(row: Any) -> orchestrator_service_pb2.JourneyDraft:
    draft = orchestrator_service_pb2.JourneyDraft(
        name=row.name, spec=from_json(row.spec, journey_pb2.JourneySpec), author=row.author,
        problems=[field_violation_pb2.FieldViolation(**p) for p in row.problems],
        warnings=[field_violation_pb2.FieldViolation(**w) for w in row.warnings],
    )
    draft.update_time.FromDatetime(row.update_time)
    return draft
