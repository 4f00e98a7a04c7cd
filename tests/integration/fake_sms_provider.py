"""``fake_sms_provider``: a real HTTP server (uvicorn + Starlette) on 127.0.0.1 that speaks the HTTP
messaging API the ``sms_http`` kind is written for, shaped like Twilio's Messages resource:

- ``POST /2010-04-01/Accounts/<id>/Messages.json``, HTTP Basic auth (401 ``{"code": 20003}`` otherwise),
  form-encoded ``To`` (E.164, else 400 ``{"code": 21211}``), ``From``, ``Body`` (else 400 ``{"code": 21602}``),
  ``StatusCallback`` and ``ClientRef``; an ``Idempotency-Key`` header makes a repeat return the first message
  instead of sending another. Answers 201 with the message as JSON (``sid``, ``status`` queued, ...).
- ``GET .../Messages/<sid>.json`` (404 ``{"code": 20404}`` when unknown) and ``GET .../Messages.json?ClientRef=``
  (``{"messages": [...]}``): the status lookup.
- status callbacks: :meth:`FakeSmsProvider.report` posts a form (``MessageSid``, ``MessageStatus``, ``ErrorCode``,
  ``ClientRef``, ``AccountSid``, ``To``, ``From``) to the message's ``StatusCallback``, signed in ``X-Signature``:
  base64 HMAC-SHA256 keyed with the auth token over the URL followed by each parameter's name and value, sorted by
  name. The fake signs with its own code, so that the connector's check is tested against an independent signer.

Misbehaviour on purpose: :attr:`FakeSmsProvider.answers` scripts a status per recipient, and
:attr:`FakeSmsProvider.drop_reply` makes a fraction of sends commit the message and never answer (the client times
out after the request went out: in doubt)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import random
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from overture_runtime.testing import free_port

from .http_receiver import served

__all__ = ["ACCOUNT", "TOKEN", "FakeSmsProvider", "fake_sms_provider"]

ACCOUNT, TOKEN = "AC0123456789abcdef", "fake-sms-auth-token"
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


@dataclass
class FakeSmsProvider:
    """The fake's state: every message it took, and how it misbehaves."""

    api_url: str
    """The account's API base, for the provider's ``api_url`` setting."""
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Every message taken, by sid (each holds its ``status_callback`` and ``client_ref``)."""
    sends: int = 0
    """POSTs that created a message (a repeat of an idempotency key creates none)."""
    answers: dict[str, int] = field(default_factory=dict)
    """Per ``To`` number: a status to answer with instead of taking the message (429, 503, ...)."""
    drop_reply: float = 0.0
    """The fraction of new messages taken and then left unanswered."""
    dropped: set[str] = field(default_factory=set)
    """The sids of messages taken whose answer was never sent."""
    lookups_down: bool = False
    """When set, the status lookups answer 503."""
    _by_key: dict[str, str] = field(default_factory=dict)
    _random: random.Random = field(default_factory=lambda: random.Random(7))
    _never: asyncio.Event = field(default_factory=asyncio.Event)

    def by_ref(self, client_ref: str) -> dict[str, Any] | None:
        """The message with *client_ref*, if taken."""
        return next((m for m in self.messages.values() if m["client_ref"] == client_ref), None)

    async def report(self, sid: str, status: str, *, error_code: str = "", signature: str | None = None,
                     post_to: str = "") -> httpx.Response:
        """Post a status callback for message *sid* (as the provider does) to its StatusCallback (or *post_to*), signed for its
        StatusCallback unless *signature* is given."""
        message = self.messages[sid]
        message["status"] = status
        params = {"MessageSid": sid, "MessageStatus": status, "ErrorCode": error_code, "ClientRef": message["client_ref"],
                  "AccountSid": ACCOUNT, "To": message["to"], "From": message["from"]}
        url = message["status_callback"]
        payload = url + "".join(k + params[k] for k in sorted(params))
        expected = base64.b64encode(hmac.new(TOKEN.encode(), payload.encode(), hashlib.sha256).digest()).decode()
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.post(post_to or url, data=params, headers={"x-signature": expected if signature is None else signature})


def _error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, "status": status}, status_code=status)


@contextlib.asynccontextmanager
async def fake_sms_provider() -> AsyncIterator[FakeSmsProvider]:
    """Serve a :class:`FakeSmsProvider` until the block ends."""
    port = free_port()
    base = f"/2010-04-01/Accounts/{ACCOUNT}"
    fake = FakeSmsProvider(api_url=f"http://127.0.0.1:{port}{base}")
    expected_auth = "Basic " + base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()

    async def create(request: Request) -> Response:
        if request.headers.get("authorization") != expected_auth:
            return _error(401, 20003, "Authenticate")
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        to, body = str(form.get("To", "")), str(form.get("Body", ""))
        if not _E164.match(to):
            return _error(400, 21211, "Invalid 'To' Phone Number")
        if not body:
            return _error(400, 21602, "Message body is required")
        if to in fake.answers:
            return _error(fake.answers[to], 20429 if fake.answers[to] == 429 else 20500, "Try again later")
        key = request.headers.get("idempotency-key", "")
        if key and key in fake._by_key:
            return JSONResponse(fake.messages[fake._by_key[key]], status_code=201)
        sid = "SM" + secrets.token_hex(16)
        fake.messages[sid] = {"sid": sid, "status": "queued", "to": to, "from": str(form.get("From", "")), "body": body,
                              "client_ref": str(form.get("ClientRef", "")), "status_callback": str(form.get("StatusCallback", "")),
                              "account_sid": ACCOUNT}
        fake.sends += 1
        if key:
            fake._by_key[key] = sid
        if fake.drop_reply and fake._random.random() < fake.drop_reply:
            fake.dropped.add(sid)
            await fake._never.wait()  # taken, never answered: the client gives up after the request went out
        return JSONResponse(fake.messages[sid], status_code=201)

    async def listing(request: Request) -> Response:
        if request.headers.get("authorization") != expected_auth:
            return _error(401, 20003, "Authenticate")
        if fake.lookups_down:
            return _error(503, 20503, "Service unavailable")
        ref = request.query_params.get("ClientRef", "")
        return JSONResponse({"messages": [m for m in fake.messages.values() if not ref or m["client_ref"] == ref]})

    async def messages(request: Request) -> Response:
        if request.method == "POST":
            return await create(request)
        return await listing(request)

    async def one(request: Request) -> Response:
        if request.headers.get("authorization") != expected_auth:
            return _error(401, 20003, "Authenticate")
        if fake.lookups_down:
            return _error(503, 20503, "Service unavailable")
        found = fake.messages.get(request.path_params["sid"])
        return JSONResponse(found) if found else _error(404, 20404, "The requested resource was not found")

    app = Starlette(routes=[Route(f"{base}/Messages.json", messages, methods=["GET", "POST"]),
                            Route(f"{base}/Messages/{{sid}}.json", one, methods=["GET"])])
    async with served(app, port):
        try:
            yield fake
        finally:
            fake._never.set()
