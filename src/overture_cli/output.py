"""Printing results: readable text by default, JSON with ``--json``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from overture_runtime.protojson import to_dict

from .client import rpc_error

__all__ = ["each_page", "emit", "run_async"]


def emit(message: Message | dict[str, Any], *, as_json: bool, text: Callable[[], str] | None = None) -> None:
    """Print *message* as JSON, or as *text* when given and JSON was not asked for."""
    if as_json or text is None:
        data = to_dict(message) if isinstance(message, Message) else message
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print(text())


async def each_page(fetch: Callable[[str], Awaitable[Any]]) -> AsyncIterator[Any]:
    """Every page of a List call: *fetch* takes a page token and returns a response with ``next_page_token``."""
    token = ""
    while True:
        page = await fetch(token)
        yield page
        token = page.next_page_token
        if not token:
            return


def run_async(factory: Callable[[], Awaitable[int | None]]) -> int:
    """Run a CLI coroutine; RPC errors print readably and exit non-zero."""

    async def main() -> int | None:
        try:
            return await factory()
        except grpc.aio.AioRpcError as error:
            rpc_error(error)

    return asyncio.run(main()) or 0
