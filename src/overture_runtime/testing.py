"""Test helpers for Overture and for those who build on it.

:func:`temporary_database` creates and drops a scratch PostgreSQL database;
:func:`serving` runs a service app in-process on a free port.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
from collections.abc import AsyncIterator

import asyncpg

from .app import BaseApp
from .config import Settings
from .server import Server

__all__ = ["free_port", "serving", "temporary_database"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def temporary_database(admin_dsn: str) -> AsyncIterator[str]:
    """Create a fresh PostgreSQL database; yield its SQLAlchemy async URL; drop it after.

    *admin_dsn* is a libpq URL of a role that may create databases, for example
    ``postgresql://postgres@127.0.0.1:5432/postgres``.
    """
    name = f"ovt_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = admin_dsn.rsplit("/", 1)[0]
    try:
        yield f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"
    finally:
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@contextlib.asynccontextmanager
async def serving(app: BaseApp, settings: Settings) -> AsyncIterator[str]:
    """Run *app* in this process on a free port; yield its address."""
    server = Server(app, settings, port=0, metrics_port=0)
    port = await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=1)
