"""``fake_audience_api``: a real HTTP server (uvicorn + Starlette) on 127.0.0.1 that speaks the audience sync protocol
of the ``audience_sync`` kind, as an advertising platform's list API would (Customer Match style): ``POST /v1/audiences/batches``
with a bearer token (401 otherwise) and a JSON body ``{"audience_id", "operation": "add"|"remove", "batch_id", "members":
[{"hashed_email", "hashed_phone_number"}]}`` whose identifiers must be lower-case SHA-256 hex and at most ``max_identifiers``
per request (400 otherwise). The ``Idempotency-Key`` header must equal the batch id; a key seen before is answered with the
first answer and applied once. The fake keeps each audience's members, so tests read what the platform would hold.

Misbehaviour on purpose, by request number (from 1, counting every well-formed request): :attr:`FakeAudienceApi.answers`
answers a request with a status instead of taking it, and :attr:`FakeAudienceApi.stall` applies a request's batch, then never
answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from overture_runtime.testing import free_port

from .http_receiver import served

__all__ = ["API_KEY", "FakeAudienceApi", "fake_audience_api"]

API_KEY = "fake-audience-api-key"
_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class FakeAudienceApi:
    """The platform's state: its audiences and every request it saw."""

    url: str
    """The batches endpoint."""
    max_identifiers: int = 1000
    """The most identifiers the platform takes in one request."""
    audiences: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    """Per audience id, its members as (kind, hash) pairs."""
    requests: list[dict[str, Any]] = field(default_factory=list)
    """Every well-formed request, in order: its batch id, operation, identifier count, the status answered, and whether it was
    applied (not a repeat, not refused)."""
    answers: dict[int, int] = field(default_factory=dict)
    """Request numbers answered with a status (429, 503, ...) instead of being taken."""
    stall: set[int] = field(default_factory=set)
    """Request numbers that are applied and then never answered."""
    _answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    _never: asyncio.Event = field(default_factory=asyncio.Event)

    def hashes(self, audience: str) -> set[str]:
        """The hashes of *audience*'s members, whatever their kind."""
        return {value for _, value in self.audiences.get(audience, set())}


def _problem(body: Any, limit: int) -> str:
    if not isinstance(body, dict) or set(body) != {"audience_id", "operation", "batch_id", "members"}:
        return "the body must hold exactly audience_id, operation, batch_id and members"
    if body["operation"] not in ("add", "remove") or not isinstance(body["members"], list) or not body["members"]:
        return "operation must be add or remove, with members"
    count = 0
    for member in body["members"]:
        if not isinstance(member, dict) or not member or set(member) - {"hashed_email", "hashed_phone_number"}:
            return "a member holds hashed_email and/or hashed_phone_number"
        if not all(isinstance(v, str) and _HEX.match(v) for v in member.values()):
            return "identifiers must be lower-case SHA-256 hex"
        count += len(member)
    return f"at most {limit} identifiers per request" if count > limit else ""


@contextlib.asynccontextmanager
async def fake_audience_api(*, max_identifiers: int = 1000) -> AsyncIterator[FakeAudienceApi]:
    """Serve a :class:`FakeAudienceApi` until the block ends."""
    port = free_port()
    fake = FakeAudienceApi(url=f"http://127.0.0.1:{port}/v1/audiences/batches", max_identifiers=max_identifiers)

    async def batches(request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return JSONResponse({"error": "unauthenticated"}, status_code=401)
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        problem = _problem(body, fake.max_identifiers)
        key = request.headers.get("idempotency-key", "")
        if problem or key != body["batch_id"]:
            return JSONResponse({"error": problem or "Idempotency-Key must be the batch id"}, status_code=400)
        number = len(fake.requests) + 1
        refused = fake.answers.get(number)
        first = key not in fake._answers and refused is None
        fake.requests.append({"batch_id": key, "operation": body["operation"], "identifiers": sum(len(m) for m in body["members"]),
                              "status": refused or 200, "applied": first})
        if refused is not None:
            return JSONResponse({"error": "try again later"}, status_code=refused)
        if first:
            members = {(kind, value) for m in body["members"] for kind, value in m.items()}
            audience = fake.audiences.setdefault(body["audience_id"], set())
            if body["operation"] == "add":
                audience |= members
            else:
                audience -= members
            fake._answers[key] = {"batch_id": key, "received": len(body["members"])}
        if number in fake.stall:
            await fake._never.wait()
        return JSONResponse(fake._answers[key])

    async with served(Starlette(routes=[Route("/v1/audiences/batches", batches, methods=["POST"])]), port):
        try:
            yield fake
        finally:
            fake._never.set()
