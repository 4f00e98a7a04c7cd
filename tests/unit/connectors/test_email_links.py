"""Unit tests of what an email gains: DKIM, one-click unsubscribe, the open
pixel and tracked links (:mod:`overture_connectors.email_links`, :mod:`overture_connectors.dkim_signing`)."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import re
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from overture.common.v1 import messaging_pb2
from overture_connectors.dkim_signing import DkimSigner
from overture_connectors.email import SmtpConnector
from overture_connectors.email_links import EmailLinks, rewrite_links
from overture_connectors.plugin import OutboundMessage
from overture_runtime.clock import ManualClock
from overture_runtime.links import Links, Unsubscribe
from overture_runtime.sealing import Sealer

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
LINKS = Links(Sealer(["k" * 32]), "https://t.example.com")
_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PRIVATE_PEM = _KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
PUBLIC_DER = _KEY.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def dns(name: bytes, timeout: int = 5) -> bytes:
    """The DKIM key record of overture._domainkey.overture.test, without DNS."""
    assert name == b"overture._domainkey.overture.test."
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(PUBLIC_DER)


def connector(**options: Any) -> SmtpConnector:
    """An SMTP connector with links (and what *options* add), on a fixed clock."""
    return SmtpConnector(host="127.0.0.1", port=1, sender="Overture <no-reply@overture.test>", links=EmailLinks(LINKS),
                         clock=ManualClock(NOW), **options)


def outbound(**fields: Any) -> OutboundMessage:
    """A marketing email to alice, overridden by *fields*."""
    values: dict[str, Any] = dict(idempotency_key="run-1:send", tenant="acme", address="alice@example.com", subject="Hello",
                                  text_body="Hi Alice, see https://example.com/text", subject_id="alice",
                                  html_body='<html><body><p>Hi <a href="https://example.com/a?x=1&amp;y=2">there</a></p></body></html>',
                                  category=messaging_pb2.MESSAGE_CATEGORY_MARKETING)
    values.update(fields)
    return OutboundMessage(**values)


def parsed(raw: bytes) -> EmailMessage:
    mail = message_from_bytes(raw, policy=default_policy)
    assert isinstance(mail, EmailMessage)
    return mail


def html_of(mail: EmailMessage) -> str:
    part = mail.get_body(("html",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def test_a_marketing_email_carries_one_click_unsubscribe_for_its_subject() -> None:
    """List-Unsubscribe holds a signed HTTPS link revoking email/marketing for the subject, and List-Unsubscribe-Post says One-Click."""
    mail = parsed(connector().payload(outbound()))
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = re.fullmatch(r"<(https://t\.example\.com/l/unsubscribe/[^>]+)>", str(mail["List-Unsubscribe"]).strip())
    assert url is not None
    unsubscribe = LINKS.read_unsubscribe(url.group(1).rsplit("/", 1)[1], now=NOW)
    assert (unsubscribe.tenant, unsubscribe.subject_id, unsubscribe.channel, unsubscribe.purpose) == ("acme", "alice", "email", "marketing")


def test_a_transactional_email_has_no_unsubscribe_unless_it_names_a_purpose() -> None:
    """Transactional mail gets no List-Unsubscribe; with a consent purpose it gets one for that purpose."""
    assert "List-Unsubscribe" not in parsed(connector().payload(outbound(category=messaging_pb2.MESSAGE_CATEGORY_TRANSACTIONAL)))
    mail = parsed(connector().payload(outbound(category=messaging_pb2.MESSAGE_CATEGORY_TRANSACTIONAL, consent_purpose="product-news")))
    token = str(mail["List-Unsubscribe"]).strip().strip("<>").rsplit("/", 1)[1]
    assert LINKS.read_unsubscribe(token, now=NOW).purpose == "product-news"


def test_without_signing_keys_nothing_is_added() -> None:
    """With no signing key no header, pixel or tracked link is added, even when asked for."""
    smtp = SmtpConnector(host="127.0.0.1", port=1, sender="o@overture.test", links=EmailLinks(Links(Sealer([]), "https://x")))
    mail = parsed(smtp.payload(outbound(track_opens=True, track_clicks=True)))
    assert "List-Unsubscribe" not in mail
    assert html_of(mail).strip() == outbound().html_body


def test_tracking_adds_a_pixel_and_rewrites_html_links_only() -> None:
    """Tracked mail gets a pixel before </body> and tracked HTML links sealing the original URL; the text part is untouched."""
    mail = parsed(connector().payload(outbound(track_opens=True, track_clicks=True)))
    body = html_of(mail)
    assert "https://example.com/a" not in body
    click = re.search(r'href="https://t\.example\.com/l/click/([^"]+)"', body)
    assert click is not None
    assert LINKS.read_click(click.group(1), now=NOW).url == "https://example.com/a?x=1&y=2"
    pixel = re.search(r'<img src="https://t\.example\.com/l/open/([^"]+)"[^>]*></body>', body)
    assert pixel is not None
    assert LINKS.read_open(pixel.group(1), now=NOW).idempotency_key == "run-1:send"
    text = mail.get_body(("plain",))
    assert text is not None and "https://example.com/text" in str(text.get_content())  # type: ignore[attr-defined]


def test_untracked_mail_keeps_its_html() -> None:
    """Without tracking asked for, the HTML part is sent as written."""
    assert html_of(parsed(connector().payload(outbound()))).strip() == outbound().html_body


@pytest.mark.parametrize("anchor", [
    '<a href="mailto:x@example.com">', '<a href="#top">', "<a href='tel:+123'>", '<a name="x">',
    '<a data-overture-notrack href="https://example.com/">', '<a href="{{ url }}">', '<a href="javascript:alert(1)">',
])
def test_links_that_are_not_web_links_or_opt_out_stay(anchor: str) -> None:
    """Non-http links, anchors without href, opted-out links and unrendered placeholders are not rewritten."""
    assert rewrite_links(anchor, lambda url: "TRACKED") == anchor


def test_unquoted_and_single_quoted_hrefs_are_rewritten() -> None:
    """An href in single quotes or without quotes is rewritten to a double-quoted tracked URL."""
    body = "<A class=x HREF='https://a.example/1'>1</A><a href=https://b.example/2>2</a>"
    assert rewrite_links(body, lambda url: f"T({url})") == '<A class=x HREF="T(https://a.example/1)">1</A><a href="T(https://b.example/2)">2</a>'


def test_a_dkim_signature_verifies_against_the_published_key() -> None:
    """A signed email verifies with dkimpy against the domain's key record, List-Unsubscribe included, and fails once altered."""
    smtp = connector(dkim=DkimSigner(private_key=PRIVATE_PEM, selector="overture", domain="overture.test"))
    raw = smtp.payload(outbound(track_opens=True))
    assert raw.startswith(b"DKIM-Signature:")
    assert dkim.verify(raw, dnsfunc=dns)
    signature = parsed(raw)["DKIM-Signature"]
    assert "list-unsubscribe" in str(signature).lower()
    tampered = raw.replace(b"/l/unsubscribe/", b"/l/unsubscribe/x", 1)
    assert not dkim.verify(tampered, dnsfunc=dns)


def test_a_utf8_address_is_signed_too() -> None:
    """An email built for SMTPUTF8 is signed and verifies."""
    smtp = connector(dkim=DkimSigner(private_key=PRIVATE_PEM, selector="overture", domain="overture.test"))
    assert dkim.verify(smtp.payload(outbound(address="jörg@example.com")), dnsfunc=dns)


def test_a_bad_dkim_key_fails_at_start_up() -> None:
    """A key that is not a private key is refused when the signer is made."""
    with pytest.raises(ValueError, match="DKIM"):
        DkimSigner(private_key="not a key", selector="s", domain="overture.test")


def test_unsubscribe_url_in_a_template_becomes_the_header_link_in_both_parts() -> None:
    """``{{ unsubscribe_url }}`` rendered in the shared sandboxes (and accepted by the template check) becomes, in the text and
    HTML parts, the very link of List-Unsubscribe, untouched by click tracking; it opens to the subject's email/marketing consent."""
    from overture_runtime.templates import check_template, html_environment, text_environment

    text_source, html_source = "Hi!\nUnsubscribe: {{ unsubscribe_url }}", '<html><body><a href="{{ unsubscribe_url }}">Unsubscribe</a></body></html>'
    assert check_template(text_source) == [] and check_template(html_source, environment=html_environment) == []
    message = outbound(text_body=text_environment.from_string(text_source).render(),
                       html_body=html_environment.from_string(html_source).render(), track_clicks=True)
    mail = parsed(connector().payload(message))
    header = "".join(str(mail["List-Unsubscribe"]).split()).strip("<>")
    text_part, html_part = mail.get_body(("plain",)), mail.get_body(("html",))
    assert text_part is not None and html_part is not None
    assert f"Unsubscribe: {header}" in str(text_part.get_content())  # type: ignore[attr-defined]
    assert f'<a href="{header}">Unsubscribe</a>' in str(html_part.get_content())  # type: ignore[attr-defined]
    token = header.rsplit("/", 1)[1]
    assert LINKS.read_unsubscribe(token, now=NOW) == Unsubscribe("acme", "alice", "email", "marketing", "run-1:send")


def test_a_transactional_footer_link_unsubscribes_from_marketing_and_no_key_fails_the_message() -> None:
    """A transactional message gets no List-Unsubscribe, but a footer link it shows revokes marketing email; without a
    signing key (or a subject) a message showing the link is refused for good instead of going out with a dead link."""
    from overture_connectors.plugin import PermanentFailure
    from overture_runtime.templates import UNSUBSCRIBE_URL_MARKER

    receipt = outbound(category=messaging_pb2.MESSAGE_CATEGORY_TRANSACTIONAL, html_body="", text_body=f"Receipt. {UNSUBSCRIBE_URL_MARKER}")
    mail = parsed(connector().payload(receipt))
    assert mail["List-Unsubscribe"] is None
    url = str(mail.get_content()).split("Receipt. ", 1)[1].strip()  # type: ignore[attr-defined]
    assert LINKS.read_unsubscribe(url.rsplit("/", 1)[1], now=NOW).purpose == "marketing"
    unkeyed = SmtpConnector(host="127.0.0.1", port=1, sender="Overture <no-reply@overture.test>", links=EmailLinks(Links(Sealer([]), "")),
                            clock=ManualClock(NOW))
    for connector_, message in ((unkeyed, receipt), (connector(), dataclasses.replace(receipt, subject_id=""))):
        with pytest.raises(PermanentFailure, match="unsubscribe_url"):
            connector_.payload(message)
