"""The links Overture puts in messages and serves on ingest's HTTP port:
one-click unsubscribe, the open-tracking pixel and tracked (rewritten)
links. The connectors service makes them; ingest reads them. This module
is the one owner of their paths and of what their tokens carry.

Every link holds a sealed token (:mod:`overture_runtime.sealing`), so a
link cannot be forged, cannot name another subject or delivery, and a
tracked link redirects only to the URL sealed into it (never an open
redirect). Links in messages do not expire: an unsubscribe link must keep
working for as long as the message may be read (RFC 8058 asks for it, and
so do anti-spam laws), and so must a link the reader clicks months later.
Rotating the signing keys is what retires them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from .config import Settings
from .sealing import BadToken, Sealer

__all__ = [
    "CLICK_PATH",
    "OPEN_PATH",
    "UNSUBSCRIBE_PATH",
    "BadToken",
    "Click",
    "Links",
    "Open",
    "Unsubscribe",
    "configured_links",
]

UNSUBSCRIBE_PATH = "/l/unsubscribe/{token}"
"""One-click unsubscribe: GET shows a confirmation page, POST revokes the consent (RFC 8058)."""
OPEN_PATH = "/l/open/{token}"
"""The open-tracking pixel (a 1x1 GIF)."""
CLICK_PATH = "/l/click/{token}"
"""A tracked link: records the click, then redirects to the sealed URL."""


@dataclass(frozen=True)
class Unsubscribe:
    """What a one-click unsubscribe link revokes."""

    tenant: str
    """The tenant that sent the message."""
    subject_id: str
    """Whose consent."""
    channel: str
    """The consent's channel, a short name (``email``)."""
    purpose: str
    """The consent's purpose (``marketing``)."""
    idempotency_key: str
    """The message's key, for the record of where the unsubscribe came from."""


@dataclass(frozen=True)
class Open:
    """A message whose tracking pixel was loaded."""

    tenant: str
    """The tenant that sent it."""
    idempotency_key: str
    """The message's key (``run_id:step_id``), which names its delivery."""


@dataclass(frozen=True)
class Click:
    """A tracked link that was followed."""

    tenant: str
    """The tenant that sent the message."""
    idempotency_key: str
    """The message's key."""
    url: str
    """Where the link goes."""


class Links:
    """Makes and reads the links, with one :class:`Sealer` and the public base URL of ingest."""

    def __init__(self, sealer: Sealer, public_url: str) -> None:
        self.sealer = sealer
        self._base = public_url.rstrip("/")

    @property
    def enabled(self) -> bool:
        """Whether links can be made (a signing key is configured)."""
        return self.sealer.enabled

    def unsubscribe_url(self, unsubscribe: Unsubscribe, *, now: dt.datetime) -> str:
        """The one-click unsubscribe URL for *unsubscribe*."""
        u = unsubscribe
        return self._url(UNSUBSCRIBE_PATH, self.sealer.seal(
            "unsubscribe", [u.tenant, u.subject_id, u.channel, u.purpose, u.idempotency_key], now=now))

    def open_url(self, opened: Open, *, now: dt.datetime) -> str:
        """The tracking pixel's URL for a message."""
        return self._url(OPEN_PATH, self.sealer.seal("open", [opened.tenant, opened.idempotency_key], now=now))

    def click_url(self, click: Click, *, now: dt.datetime) -> str:
        """The tracked URL standing for *click*'s URL in a message."""
        return self._url(CLICK_PATH, self.sealer.seal("click", [click.tenant, click.idempotency_key, click.url], now=now))

    def read_unsubscribe(self, token: str, *, now: dt.datetime) -> Unsubscribe:
        """The unsubscribe a token stands for; raises :class:`BadToken`."""
        return Unsubscribe(*self.sealer.open("unsubscribe", token, now=now, arity=5))

    def read_open(self, token: str, *, now: dt.datetime) -> Open:
        """The message an open token stands for; raises :class:`BadToken`."""
        return Open(*self.sealer.open("open", token, now=now, arity=2))

    def read_click(self, token: str, *, now: dt.datetime) -> Click:
        """The click a token stands for; raises :class:`BadToken`."""
        return Click(*self.sealer.open("click", token, now=now, arity=3))

    def inbox_token(self, tenant: str, subject_id: str, *, now: dt.datetime, expires: dt.datetime) -> str:
        """A token for one subject's live inbox stream, good until *expires*."""
        return self.sealer.seal("inbox", [tenant, subject_id], now=now, expires=expires)

    def read_inbox_token(self, token: str, *, now: dt.datetime) -> tuple[str, str, dt.datetime]:
        """The tenant and subject an inbox token opens, and when it expires; raises :class:`BadToken` (also once expired)."""
        (tenant, subject_id), expires = self.sealer.open_expiring("inbox", token, now=now, arity=2)
        return tenant, subject_id, expires or now

    def _url(self, path: str, token: str) -> str:
        return self._base + path.replace("{token}", token)


def configured_links(settings: Settings) -> Links:
    """The links of the configured signing keys and public URL."""
    return Links(Sealer([k.get_secret_value() for k in settings.signing_keys]), settings.public_url)
