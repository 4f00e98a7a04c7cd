"""One HTTP call to a provider, and what its outcome means for the message.

Every HTTP kind (``webhook``, ``slack``, ``audience_sync``, ``sms_http``)
makes its calls through :func:`call` and classifies the answer with
:func:`classify`, so that they agree on what may be retried. Only what
provably was not accepted is retryable:

- **no connection** (refused, DNS, TLS, connect or pool timeout) and a
  failure while the request was still being written: the receiver never
  had a whole request, so it cannot have acted. Retryable.
- **429** and **408**: the receiver refused to take it now. Retryable,
  after ``Retry-After`` when given (seconds or an HTTP date, capped at an
  hour).
- **5xx**: the receiver answered that it failed. Retryable, except for the
  codes the kind names as in doubt (a 504 always: a gateway gave up
  waiting for an upstream that may have acted; kinds whose receivers do not
  deduplicate a retry name more).
- **no answer after the request was sent** (read timeout, the connection
  dropped before the status line): in doubt, never sent again
  automatically.
- **any other 4xx**, and a redirect (never followed): refused for good.
- a URL the egress policy refuses (:mod:`.egress`): refused for good,
  nothing sent.

The answer's body is read up to :data:`RESPONSE_LIMIT` bytes and no further
(an endpoint cannot make the service buffer more), and kept, when asked, as
:func:`kept_response`. Bodies and URLs are never logged.
"""

from __future__ import annotations

import datetime as dt
import email.utils
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from .egress import EgressRefused
from .plugin import InDoubt, PermanentFailure, TransientFailure

__all__ = ["MAX_DEPTH", "RESPONSE_LIMIT", "Answer", "call", "classify", "kept_response", "retry_after"]

RESPONSE_LIMIT = 64 * 1024
"""The most bytes of an answer's body read and kept."""
MAX_DEPTH = 32
"""The deepest JSON body kept."""
_MAX_RETRY_AFTER = dt.timedelta(hours=1)
_NOT_REACHED = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.WriteError, httpx.WriteTimeout,
                httpx.UnsupportedProtocol, httpx.LocalProtocolError)


@dataclass(frozen=True)
class Answer:
    """What an endpoint answered."""

    status: int
    """The HTTP status."""
    headers: httpx.Headers
    """The answer's headers."""
    body: bytes | None
    """The body, when it was at most :data:`RESPONSE_LIMIT` bytes and could be read; None otherwise."""
    omitted: str = ""
    """Why :attr:`body` is None: ``too_large`` or ``unreadable``."""

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        if not self.body:
            return None
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None


def retry_after(value: str | None, now: dt.datetime) -> dt.timedelta | None:
    """A ``Retry-After`` header (delay-seconds or an HTTP date) as a delay, capped at an hour; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(dt.timedelta(seconds=int(value)), _MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return min(max(when - now, dt.timedelta(0)), _MAX_RETRY_AFTER)


async def call(client: httpx.AsyncClient, method: str, url: str | httpx.URL, *, who: str, content: bytes | None = None,
               data: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None, provider_message_id: str = "") -> Answer:
    """Make one request; raise :class:`TransientFailure` when it provably did not arrive, :class:`InDoubt` when it
    may have, and :class:`PermanentFailure` when the egress policy refused it. *who* names the receiver in errors."""
    request = client.build_request(method, url, content=content, data=data, headers=headers)
    try:
        response = await client.send(request, stream=True)
    except EgressRefused as error:
        raise PermanentFailure(str(error)) from None
    except _NOT_REACHED as error:
        raise TransientFailure(f"{who} could not be reached: {type(error).__name__}") from None
    except httpx.TransportError as error:  # read timeout, connection dropped before the answer
        raise InDoubt(f"no answer from {who} after the request was sent: {type(error).__name__}",
                      provider_message_id=provider_message_id) from None
    try:
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > RESPONSE_LIMIT:
                return Answer(response.status_code, response.headers, None, "too_large")
        return Answer(response.status_code, response.headers, bytes(body))
    except httpx.HTTPError:  # the status came; the body did not
        return Answer(response.status_code, response.headers, None, "unreadable")
    finally:
        await response.aclose()


def classify(answer: Answer, now: dt.datetime, *, who: str, provider_message_id: str = "",
             in_doubt: Collection[int] = (504,), response: dict[str, Any] | None = None) -> None:
    """Return for a 2xx; raise the failure the answer means otherwise (see the module docstring).
    *response* (the kept answer, if any) travels on a :class:`PermanentFailure`."""
    code = answer.status
    if 200 <= code < 300:
        return
    if code in (408, 429):
        raise TransientFailure(f"{who} asked to retry later ({code})", retry_after=retry_after(answer.headers.get("retry-after"), now))
    if code in in_doubt:
        raise InDoubt(f"{who} answered {code}; the message may have been acted on", provider_message_id=provider_message_id)
    if code >= 500:
        raise TransientFailure(f"{who} failed ({code})", retry_after=retry_after(answer.headers.get("retry-after"), now))
    if 300 <= code < 400:
        raise PermanentFailure(f"{who} redirected ({code}); redirects are not followed", response=response)
    raise PermanentFailure(f"{who} refused the message ({code})", response=response)


def kept_response(answer: Answer) -> dict[str, Any]:
    """The answer as a delivery keeps it: ``{"status", "body"}``, or ``{"status", "body_omitted"}``.

    A JSON body is kept parsed, any other as text. NUL characters become
    U+FFFD (PostgreSQL's JSON cannot hold them).
    """
    if answer.body is None:
        return {"status": answer.status, "body_omitted": answer.omitted or "unreadable"}
    kept: dict[str, Any] = {"status": answer.status}
    if not answer.body:
        return kept
    content_type = answer.headers.get("content-type", "").lower()
    value: Any = answer.json() if "json" in content_type or answer.body.lstrip()[:1] in (b"{", b"[") else None
    if value is None:
        value = answer.body.decode("utf-8", errors="replace")
    try:
        kept["body"] = _clean(value, 0)
    except _TooDeep:
        return {"status": answer.status, "body_omitted": "too_deep"}
    return kept


class _TooDeep(Exception):
    pass


def _clean(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict | list):
        if depth >= MAX_DEPTH:
            raise _TooDeep
        if isinstance(value, dict):
            return {_clean(k, depth): _clean(v, depth + 1) for k, v in value.items()}
        return [_clean(v, depth + 1) for v in value]
    return value
