"""Rule set versions: create (validated and tested), read, list, activate,
diff; every change audited. Compiled versions are cached: they are immutable."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from overture.rules.v1 import audit_event_pb2, rule_set_pb2
from overture_runtime.clock import Clock
from overture_runtime.db import Database
from overture_runtime.errors import FailedPrecondition, InvalidArgument, NotFound, Violations
from overture_runtime.protojson import from_json
from overture_runtime.versioned import Publication, VersionedSpecs, VersionedTables

from . import audit
from .compiler import CompiledRuleSet, compile_rule_set
from .diff import diff_specs
from .tables import rule_set_versions, rule_sets
from .testcases import run_test_cases

__all__ = ["RuleSetStore"]

_CACHE_SIZE = 512


class RuleSetStore:
    """Rule sets of all tenants. Safe for concurrent use within one event loop."""

    def __init__(self, db: Database, clock: Clock, *, active_ttl: float = 2.0) -> None:
        self._db = db
        self._clock = clock
        self._active_ttl = active_ttl
        self._active: dict[tuple[str, str], tuple[int, float]] = {}
        self._compiled: OrderedDict[tuple[str, str, int], tuple[CompiledRuleSet, rule_set_pb2.RuleSetVersion]] = OrderedDict()
        # A concurrent create that took the number, or an audit append that
        # lost the race for the tenant's next sequence, starts the create again.
        self._specs = VersionedSpecs(db, VersionedTables(head=rule_sets, versions=rule_set_versions, key="rule_set",
                                                         parent="parent_version"), what="rule set", retry_on=(audit.ConcurrentAppend,))

    async def create_version(
        self, *, tenant: str, name: str, spec: rule_set_pb2.RuleSetSpec, reason: str, parent_version: int, author: str
    ) -> tuple[rule_set_pb2.RuleSetVersion, bool]:
        """Validate, test and store a new version (:mod:`overture_runtime.versioned`).
        Returns it and whether the content was unchanged (in which case the
        latest version is returned)."""
        compiled, problems = compile_rule_set(spec)
        if problems:
            raise InvalidArgument(f"the rule set is invalid: {problems[0].description}", violations=problems)
        assert compiled is not None
        failures = run_test_cases(compiled)
        if failures:
            raise InvalidArgument(f"a test case failed: {failures[0].description}", violations=failures, reason="TEST_CASE_FAILED")
        now = self._clock.now()

        def check(head: Any) -> None:
            latest = head.latest_version if head is not None else 0
            if parent_version and parent_version != latest:
                raise FailedPrecondition(
                    f"parent_version {parent_version} is not the latest version ({latest}) of {name!r}",
                    reason="STALE_PARENT_VERSION",
                )

        async def audited(conn: AsyncConnection, published: Publication) -> None:
            await audit.append(
                conn, tenant=tenant, action=audit_event_pb2.AUDIT_ACTION_RULE_SET_VERSION_CREATED, actor=author,
                time=now, reason=reason, target=f"rule_set/{name}/{published.version.version}",
                details={"digest": published.version.digest, "parent_version": published.previous},
            )

        published = await self._specs.publish(tenant=tenant, name=name, spec=spec, author=author, reason=reason, now=now,
                                              check=check, on_created=audited)
        if not published.created:
            assert published.head is not None  # only an existing rule set can be unchanged
            return self._to_proto(published.version, active=published.head.active_version == published.version.version), True
        created = self._to_proto(published.version, active=False)
        self._remember(tenant, name, created, compiled)
        return created, False

    async def activate(self, *, tenant: str, name: str, version: int, reason: str, actor: str) -> tuple[rule_set_pb2.RuleSetVersion, int]:
        """Make *version* active; returns it and the previously active version."""
        now = self._clock.now()
        for _ in range(5):
            try:
                async with self._db.begin() as conn:
                    head = await self._specs.head(conn, tenant, name, lock=True)
                    if head is None:
                        raise NotFound(f"rule set {name!r} does not exist", reason="RULE_SET_NOT_FOUND")
                    row = await self._specs.version(conn, tenant, name, version)
                    if row is None:
                        raise NotFound(f"rule set {name!r} has no version {version}", reason="VERSION_NOT_FOUND")
                    previous = head.active_version or 0
                    if previous == version:
                        return self._to_proto(row, active=True), previous
                    await conn.execute(rule_sets.update().where(
                        (rule_sets.c.tenant == tenant) & (rule_sets.c.name == name)
                    ).values(active_version=version, update_time=now))
                    action = (audit_event_pb2.AUDIT_ACTION_RULE_SET_ROLLED_BACK if previous and version < previous
                              else audit_event_pb2.AUDIT_ACTION_RULE_SET_VERSION_ACTIVATED)
                    await audit.append(
                        conn, tenant=tenant, action=action, actor=actor, time=now, reason=reason,
                        target=f"rule_set/{name}/{version}", details={"previous_version": previous, "digest": row.digest},
                    )
                self._active[(tenant, name)] = (version, time.monotonic() + self._active_ttl)
                return self._to_proto(row, active=True), previous
            except audit.ConcurrentAppend:
                continue
        raise FailedPrecondition("the audit log is changing too fast; retry", reason="CONTENTION")

    async def get(self, *, tenant: str, name: str, version: int = 0) -> rule_set_pb2.RuleSetVersion:
        """A version, or the active one when *version* is 0."""
        async with self._db.connect() as conn:
            head = await self._specs.head(conn, tenant, name)
            if head is None:
                raise NotFound(f"rule set {name!r} does not exist", reason="RULE_SET_NOT_FOUND")
            if not version:
                if head.active_version is None:
                    raise FailedPrecondition(f"rule set {name!r} has no active version; activate one", reason="NO_ACTIVE_VERSION")
                version = head.active_version
            row = await self._specs.version(conn, tenant, name, version)
            if row is None:
                raise NotFound(f"rule set {name!r} has no version {version}", reason="VERSION_NOT_FOUND")
            return self._to_proto(row, active=head.active_version == version)

    async def list_rule_sets(self, *, tenant: str, limit: int, after: str | None) -> list[rule_set_pb2.RuleSet]:
        """The tenant's rule sets by name, after *after* when given (the primary key's order: one index range)."""
        t = rule_sets
        query = sa.select(t).where(t.c.tenant == tenant)
        if after is not None:
            query = query.where(t.c.name > after)
        async with self._db.connect() as conn:
            rows = (await conn.execute(query.order_by(t.c.name).limit(limit))).all()
        found = []
        for row in rows:
            item = rule_set_pb2.RuleSet(rule_set=row.name, latest_version=row.latest_version, active_version=row.active_version or 0)
            item.create_time.FromDatetime(row.create_time)
            item.update_time.FromDatetime(row.update_time)
            found.append(item)
        return found

    async def list_versions(self, *, tenant: str, name: str, limit: int, before: int | None) -> list[rule_set_pb2.RuleSetVersion]:
        """Versions newest first, below *before* when given."""
        async with self._db.connect() as conn:
            head = await self._specs.head(conn, tenant, name)
            if head is None:
                raise NotFound(f"rule set {name!r} does not exist", reason="RULE_SET_NOT_FOUND")
            rows = await self._specs.versions(conn, tenant, name, limit=limit, before=before)
        return [self._to_proto(r, active=head.active_version == r.version, with_tests=False) for r in rows]

    async def compiled(self, *, tenant: str, name: str, version: int = 0) -> tuple[CompiledRuleSet, rule_set_pb2.RuleSetVersion]:
        """The compiled form of a version (the active one when *version* is 0).

        Versions are immutable, so their compiled forms are cached for good.
        The active pointer is cached for ``active_ttl`` seconds: an activation
        made through another replica takes effect here within that time (at
        once through this one)."""
        if not version:
            version = await self._active_version(tenant, name)
        key = (tenant, name, version)
        hit = self._compiled.get(key)
        if hit is not None:
            self._compiled.move_to_end(key)
            return hit
        record = await self.get(tenant=tenant, name=name, version=version)
        compiled, problems = compile_rule_set(record.spec)
        if compiled is None:  # stored versions were valid when created
            raise FailedPrecondition(f"stored version {record.version} no longer compiles: {problems[0].description}")
        self._remember(tenant, name, record, compiled)
        return compiled, record

    async def _active_version(self, tenant: str, name: str) -> int:
        cached = self._active.get((tenant, name))
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        async with self._db.connect() as conn:
            head = await self._specs.head(conn, tenant, name)
        if head is None:
            raise NotFound(f"rule set {name!r} does not exist", reason="RULE_SET_NOT_FOUND")
        if head.active_version is None:
            raise FailedPrecondition(f"rule set {name!r} has no active version; activate one", reason="NO_ACTIVE_VERSION")
        self._active[(tenant, name)] = (int(head.active_version), time.monotonic() + self._active_ttl)
        return int(head.active_version)

    async def diff(self, *, tenant: str, name: str, from_version: int, to_version: int) -> list[rule_set_pb2.RuleSetChange]:
        """The changes from one version to another."""
        v = Violations()
        v.require("from_version", from_version)
        v.require("to_version", to_version)
        v.raise_if_any()
        before = await self.get(tenant=tenant, name=name, version=from_version)
        after = await self.get(tenant=tenant, name=name, version=to_version)
        return diff_specs(before.spec, after.spec)

    def _remember(self, tenant: str, name: str, record: rule_set_pb2.RuleSetVersion, compiled: CompiledRuleSet) -> None:
        self._compiled[(tenant, name, record.version)] = (compiled, record)
        while len(self._compiled) > _CACHE_SIZE:
            self._compiled.popitem(last=False)

    @staticmethod
    def _to_proto(row: Any, *, active: bool, with_tests: bool = True) -> rule_set_pb2.RuleSetVersion:
        spec = from_json(row.spec, rule_set_pb2.RuleSetSpec)
        if not with_tests:
            del spec.test_cases[:]
        version = rule_set_pb2.RuleSetVersion(
            rule_set=row.rule_set, version=row.version, digest=row.digest, author=row.author, reason=row.reason,
            parent_version=row.parent_version, active=active, spec=spec,
        )
        version.create_time.FromDatetime(row.create_time)
        return version
