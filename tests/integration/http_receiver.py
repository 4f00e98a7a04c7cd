"""A real HTTP server (uvicorn + Starlette) on 127.0.0.1 for connector tests: it records every
request (to ``/hooks`` and any path below it) and answers as told per idempotency key (a status, headers,
a body, or no answer in time)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from overture_runtime.testing import free_port

__all__ = ["Received", "Receiver", "http_receiver", "served"]


@dataclass(frozen=True)
class Received:
    """One request as the server read it."""

    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def key(self) -> str:
        """The idempotency key in a webhook payload (``data.idempotency_key``, or ``idempotency_key`` in a bare body), if any."""
        try:
            body = json.loads(self.body)
            return str(body["data"]["idempotency_key"] if "data" in body else body["idempotency_key"])
        except (ValueError, KeyError, TypeError):
            return ""


@dataclass
class Receiver:
    """What the server received, and how it answers."""

    url: str
    requests: list[Received] = field(default_factory=list)
    answers: dict[str, tuple[int, dict[str, str]]] = field(default_factory=dict)
    """Per idempotency key: the status and headers to answer with (default 204)."""
    bodies: dict[str, bytes] = field(default_factory=dict)
    """Per idempotency key: the body to answer with (default none)."""
    stall: set[str] = field(default_factory=set)
    """Keys whose request is read, recorded, then left unanswered until the client gives up."""
    stalled: asyncio.Event = field(default_factory=asyncio.Event)


@contextlib.asynccontextmanager
async def served(app: Starlette, port: int) -> AsyncIterator[None]:
    """Serve *app* with uvicorn on 127.0.0.1:*port* until the block ends."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task
            raise RuntimeError(f"the test server could not start on port {port}")
        await asyncio.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def http_receiver() -> AsyncIterator[Receiver]:
    """Serve a :class:`Receiver` until the block ends."""
    port = free_port()
    receiver = Receiver(url=f"http://127.0.0.1:{port}/hooks")

    async def hook(request: Request) -> Response:
        received = Received(request.url.path, {k.lower(): v for k, v in request.headers.items()}, await request.body())
        receiver.requests.append(received)
        if received.key in receiver.stall:
            await receiver.stalled.wait()
        status, headers = receiver.answers.get(received.key, (204, {}))
        return Response(receiver.bodies.get(received.key), status_code=status, headers=headers)

    app = Starlette(routes=[Route("/hooks", hook, methods=["POST"]), Route("/hooks/{rest:path}", hook, methods=["POST"])])
    async with served(app, port):
        try:
            yield receiver
        finally:
            receiver.stalled.set()
