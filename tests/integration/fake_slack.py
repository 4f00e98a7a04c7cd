"""``fake_slack_webhooks``: a real HTTP server (uvicorn + Starlette) on 127.0.0.1 that speaks Slack's
incoming-webhook protocol as Slack documents it (https://api.slack.com/messaging/webhooks): a JSON
POST to ``/services/<team>/<bot>/<token>`` answered ``ok``, or a 4xx with Slack's error word when the
URL is unknown (``no_service``), the body is not JSON (``invalid_payload``), there is neither ``text``
nor ``blocks`` (``no_text``), or a block breaks Block Kit's rules or limits (``invalid_blocks``).
Answers can be scripted (a 429 with Retry-After, a 404 ``channel_not_found``), first in, first out."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from overture_runtime.testing import free_port

from .http_receiver import served

__all__ = ["FakeSlack", "block_problems", "fake_slack_webhooks"]

TOKEN_PATH = "/services/T0001/B0001/xoxbsecrettoken"
_TEXT_TYPES = {"plain_text", "mrkdwn"}


@dataclass
class FakeSlack:
    """What the fake took, and how it answers next."""

    url: str
    """The incoming webhook URL it serves."""
    posted: list[dict[str, Any]] = field(default_factory=list)
    """Every message it accepted, in order."""
    refused: list[str] = field(default_factory=list)
    """The error word of every message it refused."""
    script: list[tuple[int, dict[str, str], str]] = field(default_factory=list)
    """Answers to give instead of taking the message (status, headers, body), first in, first out."""


def _text(obj: Any, limit: int, *, plain: bool = False) -> list[str]:
    if not isinstance(obj, dict) or obj.get("type") not in ({"plain_text"} if plain else _TEXT_TYPES):
        return ["a text object must be plain_text" + ("" if plain else " or mrkdwn")]
    text = obj.get("text")
    if not isinstance(text, str) or not text or len(text) > limit:
        return [f"text must be 1 to {limit} characters"]
    return []


def block_problems(blocks: Any) -> list[str]:
    """What Slack would refuse in *blocks* (Block Kit's rules and limits), or nothing."""
    if not isinstance(blocks, list) or len(blocks) > 50:
        return ["blocks must be a list of at most 50"]
    problems: list[str] = []
    for block in blocks:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "header":
            problems += _text(block.get("text"), 150, plain=True)
        elif kind == "section":
            if "text" not in block and "fields" not in block:
                problems.append("a section needs text or fields")
            if "text" in block:
                problems += _text(block["text"], 3000)
            fields = block.get("fields", [])
            if not isinstance(fields, list) or len(fields) > 10:
                problems.append("at most 10 fields")
            else:
                for item in fields:
                    problems += _text(item, 2000)
            accessory = block.get("accessory")
            if accessory is not None:
                if accessory.get("type") != "button":
                    problems.append("only buttons are expected as accessories")
                problems += _text(accessory.get("text"), 75, plain=True)
                if len(accessory.get("url", "")) > 3000 or len(accessory.get("action_id", "")) > 255:
                    problems.append("button url or action_id too long")
        elif kind == "context":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= 10:
                problems.append("a context needs 1 to 10 elements")
            else:
                for item in elements:
                    problems += _text(item, 3000)
        elif kind != "divider":
            problems.append(f"unknown block type {kind!r}")
    return problems


@contextlib.asynccontextmanager
async def fake_slack_webhooks() -> AsyncIterator[FakeSlack]:
    """Serve a :class:`FakeSlack` until the block ends."""
    port = free_port()
    fake = FakeSlack(url=f"http://127.0.0.1:{port}{TOKEN_PATH}")

    async def webhook(request: Request) -> PlainTextResponse:
        def refuse(status: int, word: str) -> PlainTextResponse:
            fake.refused.append(word)
            return PlainTextResponse(word, status_code=status)

        if request.url.path != TOKEN_PATH:
            return refuse(404, "no_service")
        if fake.script:
            status, headers, body = fake.script.pop(0)
            return PlainTextResponse(body, status_code=status, headers=headers)
        if request.headers.get("content-type", "").split(";")[0] != "application/json":
            return refuse(400, "invalid_payload")
        try:
            message = json.loads(await request.body())
        except ValueError:
            return refuse(400, "invalid_payload")
        if not isinstance(message, dict) or not (message.get("text") or message.get("blocks")):
            return refuse(400, "no_text")
        if "blocks" in message and block_problems(message["blocks"]):
            return refuse(400, "invalid_blocks")
        fake.posted.append(message)
        return PlainTextResponse("ok")

    async with served(Starlette(routes=[Route("/services/{rest:path}", webhook, methods=["POST"])]), port):
        yield fake
