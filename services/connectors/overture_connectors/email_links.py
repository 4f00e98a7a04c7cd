"""What an email gains from Overture's links: the one-click unsubscribe
headers (RFC 2369 ``List-Unsubscribe`` with RFC 8058
``List-Unsubscribe-Post``), the same link wherever a template wrote
``{{ unsubscribe_url }}`` (a footer), an open-tracking pixel, and tracked
links.

Only the HTML part is tracked, as mail clients render only it: links in
the text part stay as written (rewriting them would show long opaque URLs
to text readers). A link is rewritten when it is an ``http``/``https``
``href`` of an ``<a>`` element, not marked ``data-overture-notrack``; the
URL travels sealed inside the tracked link (:mod:`overture_runtime.links`),
so nothing is stored per link and no link can be made to point elsewhere.
"""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Callable
from dataclasses import dataclass

from overture.common.v1 import messaging_pb2
from overture_runtime.links import Click, Links, Open, Unsubscribe
from overture_runtime.templates import UNSUBSCRIBE_URL_MARKER

from .plugin import OutboundMessage, PermanentFailure

__all__ = ["Additions", "EmailLinks", "rewrite_links"]

_ANCHOR = re.compile(r"<a\b[^>]*>", re.IGNORECASE)
_HREF = re.compile(r"""(\bhref\s*=\s*)(?:"([^"]*)"|'([^']*)'|([^\s>"']+))""", re.IGNORECASE)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_MAX_URL = 2048


@dataclass(frozen=True)
class Additions:
    """What one message gains."""

    headers: dict[str, str]
    """Headers to add (``List-Unsubscribe``, ``List-Unsubscribe-Post``)."""
    html_body: str
    """The HTML part, with the pixel and tracked links when asked for, and ``{{ unsubscribe_url }}`` filled in."""
    text_body: str = ""
    """The text part, with ``{{ unsubscribe_url }}`` filled in."""


class EmailLinks:
    """Adds the links of one tenant's message; see the module docstring."""

    def __init__(self, links: Links) -> None:
        self._links = links

    @property
    def enabled(self) -> bool:
        """Whether links can be made (a signing key is configured)."""
        return self._links.enabled

    def apply(self, message: OutboundMessage, *, now: dt.datetime) -> Additions:
        """The headers, HTML and text bodies of *message* with its links. Raises :class:`PermanentFailure` when a
        body shows ``{{ unsubscribe_url }}`` and no link can be made (no signing key, no subject)."""
        headers: dict[str, str] = {}
        body, text = message.html_body, message.text_body
        in_body = UNSUBSCRIBE_URL_MARKER in body or UNSUBSCRIBE_URL_MARKER in text
        if not self._links.enabled:
            if in_body:
                raise PermanentFailure("the message shows {{ unsubscribe_url }}, but no signing key is configured (OVERTURE_SIGNING_KEYS)")
            return Additions(headers, body, text)
        purpose = message.consent_purpose or ("marketing" if message.category != messaging_pb2.MESSAGE_CATEGORY_TRANSACTIONAL else "")
        url = ""
        if (purpose or in_body) and message.subject_id:
            # A transactional message may still show a link: it unsubscribes from marketing email.
            unsubscribe = Unsubscribe(message.tenant, message.subject_id, "email", purpose or "marketing", message.idempotency_key)
            url = self._links.unsubscribe_url(unsubscribe, now=now)
            if purpose:
                headers["List-Unsubscribe"] = f"<{url}>"
                headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        elif in_body:
            raise PermanentFailure("the message shows {{ unsubscribe_url }}, but has no subject to unsubscribe")
        if body and message.track_clicks:
            body = rewrite_links(body, lambda target: self._links.click_url(Click(message.tenant, message.idempotency_key, target), now=now))
        if body and message.track_opens:
            pixel = (f'<img src="{html.escape(self._links.open_url(Open(message.tenant, message.idempotency_key), now=now))}" '
                     'width="1" height="1" alt="" style="display:block;border:0;width:1px;height:1px">')
            ends = list(_BODY_END.finditer(body))
            at = ends[-1].start() if ends else len(body)
            body = body[:at] + pixel + body[at:]
        if in_body:  # last, so that click tracking leaves the unsubscribe link as it is
            body, text = body.replace(UNSUBSCRIBE_URL_MARKER, html.escape(url)), text.replace(UNSUBSCRIBE_URL_MARKER, url)
        return Additions(headers, body, text)


def rewrite_links(body: str, tracked: Callable[[str], str]) -> str:
    """*body* with each trackable ``<a href>`` replaced by ``tracked(url)``."""

    def anchor(match: re.Match[str]) -> str:
        tag = match.group(0)
        if "data-overture-notrack" in tag.lower():
            return tag
        href = _HREF.search(tag)
        if href is None:
            return tag
        raw = next(g for g in href.groups()[1:] if g is not None)
        target = html.unescape(raw).strip()
        if not target.lower().startswith(("http://", "https://")) or len(target) > _MAX_URL or "{{" in target:
            return tag
        replaced = f'{href.group(1)}"{html.escape(tracked(target))}"'
        return tag[:href.start()] + replaced + tag[href.end():]

    return _ANCHOR.sub(anchor, body)

