"""The common shape of a service's application object.

:class:`BaseApp` owns what every service has: settings, clock and ids, the
database (migrated at start-up when ``auto_migrate`` is on, its statistics
kept current as its tables grow), Redis, clients to other services, and
supervised background loops that restart with
backoff when they fail and are cancelled on stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import grpc
import redis.asyncio as aioredis
import structlog

from .clients import open_channel
from .clock import Clock, IdGenerator, SystemClock
from .config import ServiceName, Settings
from .db import Database, analyze_grown, migrate, vacuum_churned
from .redis import Keys, create_redis

__all__ = ["BaseApp"]

log = structlog.get_logger("overture.app")
_LOOP_GRACE = 3.0
_MAINTENANCE_INTERVAL = 10.0


class BaseApp:
    """Base of each service's app. Subclasses set the class attributes and
    override :meth:`on_start`, :meth:`register` and :meth:`on_stop`."""

    name: ClassVar[ServiceName]
    service_names: ClassVar[Sequence[str]]
    migrations: ClassVar[Path | None] = None
    """The service's Alembic script location, if it has tables."""

    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.ids = IdGenerator()
        self.keys = Keys(settings.redis_namespace)
        self._db: Database | None = None
        self._redis: aioredis.Redis | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    @property
    def db(self) -> Database:
        """The service's database. Available after :meth:`start`."""
        assert self._db is not None, "the app has not started"
        return self._db

    @property
    def redis(self) -> aioredis.Redis:
        """The service's Redis client. Available after :meth:`start`."""
        if self._redis is None:
            self._redis = create_redis(self.settings.redis_url, cluster=self.settings.redis_cluster)
        return self._redis

    def channel(self, service: ServiceName) -> grpc.aio.Channel:
        """A shared channel to another service, opened on first use."""
        if service not in self._channels:
            self._channels[service] = open_channel(self.settings.address(service), self.settings)
        return self._channels[service]

    async def start(self) -> None:
        """Open the database (migrating it), then start the service."""
        self._db = Database(self.settings.database_url, pool_size=self.settings.db_pool_size, max_overflow=self.settings.db_max_overflow)
        if self.migrations is not None and self.settings.auto_migrate:
            await migrate(self.settings.database_url, script_location=self.migrations, version_table=f"{self.name}_alembic_version")
        await self.on_start()
        if not self._db.is_sqlite:
            self.spawn("maintenance", self._maintain)

    async def _maintain(self) -> None:
        """Keep this service's tables fit to be read on the hot paths: their
        statistics current (:func:`analyze_grown`) and their dead index
        entries removed (:func:`vacuum_churned`), whatever autovacuum does."""
        while not self._stopping.is_set():
            grown = await analyze_grown(self.db, prefix=self.name)
            if grown:
                log.info("db.analyzed", tables=grown, reason="grown since their statistics were taken")
            churned = await vacuum_churned(self.db, prefix=self.name)
            if churned:
                log.info("db.vacuumed", tables=churned, reason="a tenth of their rows changed since their last vacuum")
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=_MAINTENANCE_INTERVAL)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        """Stop background loops, then close clients and the database."""
        self._stopping.set()
        await self.on_stop()
        # Loops watch `stopping` and return within a poll interval; waiting for
        # that (rather than cancelling at once) lets blocking Redis reads
        # finish and hand their connections back to be closed.
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=_LOOP_GRACE)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for channel in self._channels.values():
            await channel.close()
        if self._redis is not None:
            await self._redis.aclose()
        if self._db is not None:
            await self._db.close()

    async def on_start(self) -> None:
        """Start the service's own work. Called after the database is ready."""

    async def on_stop(self) -> None:
        """Stop the service's own work, before resources close."""

    def register(self, server: grpc.aio.Server) -> None:
        """Add the servicers to *server*."""
        raise NotImplementedError

    def spawn(self, name: str, loop: Callable[[], Awaitable[Any]], *, max_backoff: float = 30.0) -> None:
        """Run *loop* in the background until stop, restarting it with
        backoff if it raises. A loop that returns is not restarted."""

        async def supervise() -> None:
            delay = 0.5
            while not self._stopping.is_set():
                try:
                    await loop()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("background.failed", loop=name, retry_in_s=delay)
                    try:
                        await asyncio.wait_for(self._stopping.wait(), timeout=delay)
                    except TimeoutError:
                        pass
                    delay = min(delay * 2, max_backoff)

        self._tasks.append(asyncio.create_task(supervise(), name=f"{self.name}:{name}"))

    @property
    def stopping(self) -> asyncio.Event:
        """Set when the app is stopping; loops wait on it to exit promptly."""
        return self._stopping
