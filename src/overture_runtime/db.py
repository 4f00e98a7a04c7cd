"""Relational storage: SQLAlchemy 2 async engines and Alembic migrations.

Production runs PostgreSQL through asyncpg; ``overture dev`` runs SQLite
through aiosqlite (one file per service), the way the Prefect and Temporal
dev servers do. Code stays portable between the two by using SQLAlchemy
Core and :func:`insert_ignore` for "insert unless it exists".

Each service owns its tables (prefixed with its name) and its own Alembic
history with its own version table, so services migrate and deploy
independently even when they share one database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker, create_async_engine

__all__ = ["SERVER_SETTINGS", "Database", "JSONType", "analyze_grown", "any_of", "any_param", "built_once", "insert_ignore", "migrate", "run_migrations_in_env", "schema_changed",
           "storage_unavailable", "tenant_keys", "utc_datetime", "vacuum_churned"]


_T = TypeVar("_T")

SERVER_SETTINGS = {"plan_cache_mode": "force_custom_plan"}
"""PostgreSQL settings of every connection Overture opens (see Database)."""


class Database:
    """An async engine and its session factory. Not fork-safe: create one per process."""

    def __init__(self, url: str, *, echo: bool = False, pool_size: int = 10, max_overflow: int = 10) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.connections = pool_size + max_overflow
        """At most this many connections are open at once (on PostgreSQL)."""
        # hide_parameters: errors must not carry row values (personal data) into logs.
        kwargs: dict[str, Any] = {"echo": echo, "hide_parameters": True}
        if self.is_sqlite:
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
        else:
            # No pool_pre_ping: on asyncpg it costs three round trips (BEGIN,
            # a ping, ROLLBACK) per checkout, a quarter of the orchestrator's
            # CPU at low rates. A connection that died is found on use
            # instead: SQLAlchemy sees the disconnect, drops every pooled
            # connection older than it, and the call fails once with
            # UNAVAILABLE (see :func:`storage_unavailable`), which callers
            # and background loops retry.
            kwargs.update(pool_size=pool_size, max_overflow=max_overflow)
            # Prepared statements are cached per connection, and PostgreSQL
            # switches a prepared statement to a generic plan after five
            # runs. A generic plan made while a table was small (or its
            # statistics stale: autovacuum may lag or be off) keeps scanning
            # long after the table grew. A custom plan is made per execution
            # from the table's current size, so the hot lookups stay on their
            # index whatever the statistics say; planning them costs ~0.1 ms.
            kwargs["connect_args"] = {"server_settings": dict(SERVER_SETTINGS)}
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # Reads run without a transaction on PostgreSQL: under READ
        # COMMITTED each statement takes its own snapshot anyway, and a
        # driver-level transaction costs a BEGIN and a ROLLBACK round trip.
        self._autocommit = self.engine if self.is_sqlite else self.engine.execution_options(isolation_level="AUTOCOMMIT")

    @property
    def asyncpg_dsn(self) -> str:
        """The database's DSN for asyncpg itself, for the hot paths that use
        asyncpg directly, on connections of their own (PostgreSQL only)."""
        if self.is_sqlite:
            raise ValueError("SQLite has no asyncpg DSN")
        return make_url(self.url).set(drivername="postgresql").render_as_string(hide_password=False)

    def connect(self) -> Any:
        """``async with db.connect() as conn``: a connection, no transaction
        (on PostgreSQL each statement commits on its own: use it to read,
        and :meth:`begin` to change several rows together)."""
        return self._autocommit.connect()

    def begin(self) -> Any:
        """``async with db.begin() as conn``: a connection in a transaction, committed on exit."""
        return self.engine.begin()

    def one_statement(self) -> Any:
        """``async with db.one_statement() as conn``: a connection for a single
        statement that changes rows. On PostgreSQL it runs without a
        transaction around it: a statement is atomic on its own, and a BEGIN
        and a COMMIT would be two more round trips; its changes are committed
        (and durable) before its result is returned. On SQLite, in a
        transaction committed on exit."""
        return self.begin() if self.is_sqlite else self._autocommit.connect()

    async def close(self) -> None:
        """Dispose of the connection pool."""
        await self.engine.dispose()


_UNREACHABLE = frozenset({
    # asyncpg's names for a server that is gone, restarting, refusing or full
    "ConnectionDoesNotExistError", "ConnectionFailureError", "CannotConnectNowError", "AdminShutdownError", "CrashShutdownError",
    "TooManyConnectionsError", "PostgresConnectionError", "ConnectionRefusedError", "ConnectionResetError",
})


def _unwrapped(error: BaseException) -> Iterator[BaseException]:
    """*error* and what it wraps (SQLAlchemy's ``orig``, or the cause), five deep at most."""
    seen: BaseException | None = error
    for _ in range(5):
        if seen is None:
            return
        yield seen
        seen = getattr(seen, "orig", None) or seen.__cause__


def storage_unavailable(error: BaseException) -> bool:
    """Whether *error* says the database could not be reached or dropped the
    connection (retrying may succeed), however SQLAlchemy wrapped it."""
    return any(getattr(e, "connection_invalidated", False) or type(e).__name__ in _UNREACHABLE for e in _unwrapped(error))


def schema_changed(error: BaseException) -> bool:
    """Whether *error* is asyncpg's InvalidCachedStatementError (a migration
    changed a table under a cached statement; the driver has dropped its
    cache, so a retry succeeds), however SQLAlchemy wrapped it."""
    return any(type(e).__name__ == "InvalidCachedStatementError" for e in _unwrapped(error))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the one writer; busy_timeout waits for the
    # write lock instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def insert_ignore(conn: AsyncConnection, table: sa.Table, *, index_elements: list[str]) -> Any:
    """An ``INSERT ... ON CONFLICT (index_elements) DO NOTHING`` for the connection's dialect."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing(index_elements=index_elements)


def any_of(conn: AsyncConnection, column: Any, values: Iterable[Any]) -> Any:
    """``column IN values`` for a batch: on PostgreSQL ``column = ANY(array)``
    with the values as one array parameter, so that the statement, and its
    prepared form, is the same whatever the number of values (an expanding
    IN list is compiled, and prepared by asyncpg, once per list length: a
    batch of 7 after one of 6 paid a Parse round trip). Elsewhere an IN list."""
    wanted = sorted(set(values))
    if conn.dialect.name == "postgresql":
        return column == sa.any_(sa.bindparam(None, wanted, type_=postgresql.ARRAY(column.type)))
    return column.in_(wanted)


def any_param(column: Any, name: str, *, on_postgresql: bool) -> Any:
    """:func:`any_of` with the values bound at execution, as the parameter
    *name*, for a statement built once (see :func:`built_once`):
    ``column = ANY(:name)`` on PostgreSQL, an expanding ``IN`` elsewhere."""
    if on_postgresql:
        return column == sa.any_(sa.bindparam(name, type_=postgresql.ARRAY(column.type)))
    return column.in_(sa.bindparam(name, expanding=True))


def built_once(build: Callable[[bool], _T]) -> Callable[[AsyncConnection], _T]:
    """A statement made once per dialect, by *build(on_postgresql)*, instead
    of per call: building a select costs about 0.2 ms of CPU, more than the
    rest of its execution. Returns the function that gives a connection's."""
    made = {on_postgresql: build(on_postgresql) for on_postgresql in (True, False)}
    return lambda conn: made[conn.dialect.name == "postgresql"]


def tenant_keys(conn: AsyncConnection, tenant_column: Any, key_column: Any, pairs: Iterable[tuple[str, str]]) -> Any:
    """The rows of (tenant, key) *pairs*: ``(tenant = t AND key = ANY(keys)) OR ...``
    per tenant, an index condition on (tenant, key) where a row-value IN list
    reads every row of the tenant. On PostgreSQL each tenant's keys are one
    array parameter, so the statement is the same whatever the number of keys
    (one prepared statement, no expanding IN list compiled per call)."""
    by_tenant: dict[str, set[str]] = {}
    for tenant, key in pairs:
        by_tenant.setdefault(tenant, set()).add(key)
    return sa.or_(*((tenant_column == tenant) & any_of(conn, key_column, keys) for tenant, keys in by_tenant.items()))


class utc_datetime(sa.types.TypeDecorator[Any]):
    """A timezone-aware UTC datetime on PostgreSQL and SQLite alike.

    SQLite has no time zones; values are stored naive in UTC and given back
    aware, so domain code only ever sees aware datetimes.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        if dialect.name == "sqlite":
            from datetime import UTC

            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        if value is not None and value.tzinfo is None:
            from datetime import UTC

            return value.replace(tzinfo=UTC)
        return value


def _alembic_config(url: str, script_location: Path, version_table: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["version_table"] = version_table
    return cfg


async def migrate(url: str, *, script_location: Path, version_table: str, revision: str = "head") -> None:
    """Upgrade the database at *url* to *revision* with one service's migrations.

    Alembic's runner is synchronous and starts its own event loop, so it runs
    in a worker thread. On PostgreSQL an advisory lock serializes replicas
    that start at the same time.
    """
    cfg = _alembic_config(url, script_location, version_table)
    await asyncio.to_thread(command.upgrade, cfg, revision)


def _render_item(type_: str, obj: Any, autogen_context: Any) -> Any:
    """Render our portable column types as plain SQLAlchemy in migrations,
    so that migration files do not import application code."""
    if type_ != "type":
        return False
    if isinstance(obj, utc_datetime):
        return "sa.DateTime(timezone=True)"
    if isinstance(obj, sa.JSON):
        autogen_context.imports.add("from sqlalchemy.dialects import postgresql")
        return 'sa.JSON().with_variant(postgresql.JSONB(), "postgresql")'
    return False


def run_migrations_in_env(target_metadata: sa.MetaData) -> None:
    """The body of every service's ``migrations/env.py``."""
    from alembic import context

    cfg = context.config
    url = cfg.get_main_option("sqlalchemy.url")
    version_table = cfg.attributes.get("version_table", "alembic_version")
    assert url is not None

    def run(connection: sa.Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table=version_table,
            render_as_batch=connection.dialect.name == "sqlite",
            render_item=_render_item,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Transaction-scoped: released when the migration commits.
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:t))"), {"t": version_table})
            context.run_migrations()

    async def main() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:
                await connection.run_sync(run)
                await connection.commit()
        finally:
            await engine.dispose()

    asyncio.run(main())


JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
"""JSON on SQLite, JSONB on PostgreSQL."""


_GROWN = sa.text("""
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname LIKE :pattern
  AND pg_relation_size(c.oid) / current_setting('block_size')::int > :factor * GREATEST(c.relpages, 8)
ORDER BY c.relname
""")


async def analyze_grown(db: Database, *, prefix: str, factor: float = 2.0) -> list[str]:
    """ANALYZE the tables named ``<prefix>_*`` that have grown to more than
    *factor* times their size at their last ANALYZE; return their names.

    Statistics go stale when autovacuum lags or is off, after bulk loads and
    on new tenants, and a planner that believes a table is small scans it,
    or uses only the first column of an index, long after it grew. Checking
    is one catalog query (sizes are exact at once, unlike the statistics
    collector's counters), and doubling means a growing table is analyzed
    a logarithmic number of times. PostgreSQL only; SQLite is left alone."""
    return await _each_table(db, _GROWN, {"pattern": f"{prefix}\\_%", "factor": factor}, "ANALYZE")


_CHURNED = sa.text("""
SELECT relname FROM pg_stat_user_tables
WHERE schemaname = current_schema() AND relname LIKE :pattern
  AND n_dead_tup >= GREATEST(:minimum, :fraction * n_live_tup)
ORDER BY relname
""")


async def vacuum_churned(db: Database, *, prefix: str, minimum: int = 2000, fraction: float = 0.1) -> list[str]:
    """VACUUM the tables named ``<prefix>_*`` whose dead rows (updated or
    deleted, by the statistics collector's count) reach *fraction* of their
    live rows, and at least *minimum*; return their names.

    A row updated or deleted leaves its index entries behind until a VACUUM
    removes them, and a scan in index order walks them: the workers' claim
    of due tokens read 550 buffers to find nothing after 300,000 runs, and
    it grew with every run. Autovacuum removes them where it is on and
    keeping up (then this finds nothing to do); where it is off or behind,
    this does its work for Overture's own tables, by the same rule, so the
    cost of a VACUUM is paid once per *fraction* of a table's rows changed.
    ``SKIP_LOCKED``: a table another replica is vacuuming is left to it.
    PostgreSQL only; SQLite is left alone."""
    return await _each_table(db, _CHURNED, {"pattern": f"{prefix}\\_%", "minimum": minimum, "fraction": fraction}, "VACUUM (SKIP_LOCKED)")


async def _each_table(db: Database, tables: sa.TextClause, params: dict[str, Any], command: str) -> list[str]:
    """Run *command* on each table the query *tables* names; return their names.
    Each runs outside a transaction, as VACUUM must, and so that an ANALYZE's
    statistics are in as soon as it is done. PostgreSQL only."""
    if db.is_sqlite:
        return []
    async with db.connect() as conn:
        names = [str(n) for n in (await conn.execute(tables, params)).scalars()]
    for name in names:
        async with db.connect() as conn:
            await conn.execute(sa.text(f'{command} "{name}"'))
    return names
