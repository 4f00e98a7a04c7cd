"""Calling the other services from the engine: the tenant's credentials, a
deadline, and which failures are transient (try the step again later)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from overture_runtime.clients import call_metadata
from overture_runtime.config import Settings

__all__ = ["Transient", "call"]

_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
                        grpc.StatusCode.ABORTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})


class Transient(Exception):
    """A transient failure: try the step again after a backoff."""


async def call(settings: Settings, method: Callable[..., Awaitable[Any]], request: Any, tenant: str, what: str, *,
               batch: bool = False) -> Any:
    """``method(request)`` for *tenant*; a transient failure raises
    :class:`Transient` naming *what* was called, others raise as they came."""
    # A batch of 500 sends can outlast one RPC's deadline on a slow relay;
    # it completes either way, and a retry would only find duplicates.
    timeout = settings.rpc_timeout_seconds * (6 if batch else 1)
    try:
        return await method(request, metadata=call_metadata(settings, tenant), timeout=timeout)
    except grpc.aio.AioRpcError as error:
        if error.code() in _TRANSIENT:
            raise Transient(f"{what}: {error.code().name}: {error.details()}") from None
        raise
