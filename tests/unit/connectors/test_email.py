"""Unit tests of the SMTP connector's MIME building (:mod:`overture_connectors.email`)."""

from __future__ import annotations

from email import message_from_bytes
from email.message import EmailMessage
from email.policy import compat32
from email.policy import default as default_policy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from overture_connectors.email import _CRLF, SmtpConnector
from overture_connectors.plugin import OutboundMessage

SMTP = SmtpConnector(host="127.0.0.1", port=1, sender="Overture Café <no-reply@overture.test>")


def parsed(message: OutboundMessage) -> EmailMessage:
    """*message* built, serialised and parsed back the way a receiving server would."""
    parsed_message = message_from_bytes(SMTP.build(message).as_bytes(), policy=default_policy)
    assert isinstance(parsed_message, EmailMessage)
    return parsed_message


def outbound(**fields: str) -> OutboundMessage:
    """An outbound message for alice, overridden by *fields*."""
    values = dict(idempotency_key="run-1:send", tenant="acme", address="alice@example.com", subject="Hello", text_body="Hi Alice")
    values.update(fields)
    return OutboundMessage(**values)


def test_a_text_email_round_trips_with_its_headers() -> None:
    """A text-only email parses back with its sender, recipient, subject, body, Message-ID and key."""
    mail = parsed(outbound(text_body="Hi Alice\nSee you = soon " + "x" * 1200))
    assert str(mail["From"]) == "Overture Café <no-reply@overture.test>"
    assert (str(mail["To"]), str(mail["Subject"]), str(mail["X-Overture-Key"])) == ("alice@example.com", "Hello", "run-1:send")
    assert mail["Message-ID"] == SMTP.message_id(outbound())
    assert mail.get_content_type() == "text/plain"
    assert mail.get_content() == "Hi Alice\nSee you = soon " + "x" * 1200


def test_html_is_an_alternative_to_the_text() -> None:
    """With an HTML body the email is multipart/alternative: text first, then HTML."""
    mail = parsed(outbound(html_body="<p>Hi <b>Alice</b></p>"))
    assert mail.get_content_type() == "multipart/alternative"
    text, html = mail.iter_parts()
    assert text.get_content() == "Hi Alice"
    assert html.get_content_type() == "text/html" and html.get_content() == "<p>Hi <b>Alice</b></p>"


def test_non_ascii_subjects_and_bodies_survive() -> None:
    """A subject and a body outside ASCII are encoded and come back unchanged."""
    mail = parsed(outbound(subject="Grüße, Zoë — 🎉", text_body="Ça va? 日本語"))
    assert str(mail["Subject"]) == "Grüße, Zoë — 🎉"
    assert mail.get_content() == "Ça va? 日本語"


def test_an_address_outside_ascii_gets_utf8_headers() -> None:
    """An internationalised address (it needs SMTPUTF8) is written as UTF-8 in the To header, as RFC 6532 says."""
    raw = SMTP.build(outbound(address="zoë@exämple.com")).as_bytes()
    assert "To: zoë@exämple.com".encode() in raw
    assert message_from_bytes(raw, policy=default_policy)["X-Overture-Key"] == "run-1:send"


def test_the_message_id_is_stable_per_key_and_tenant() -> None:
    """The Message-ID depends on the tenant and key only, so a repeat would be recognisable downstream."""
    assert SMTP.message_id(outbound()) == SMTP.message_id(outbound(subject="other"))
    assert SMTP.message_id(outbound()) != SMTP.message_id(outbound(tenant="globex"))
    assert SMTP.message_id(outbound()).endswith("@overture.test>")


_COMPAT32_CRLF = compat32.clone(linesep="\r\n")
_ASCII = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=100)
_PRINTABLE = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=100)
_WORDS = st.from_regex(r"[\x21-\x7e]{1,25}( [\x21-\x7e]{1,25}){0,6}", fullmatch=True)


def _folded(policy: Any, name: str, value: str) -> bytes | type[BaseException]:
    try:
        return bytes(policy.fold_binary(name, value))
    except Exception as error:  # noqa: BLE001 - the same refusal is part of the same behaviour
        return type(error)


@settings(max_examples=3000)
@given(st.sampled_from(["Subject", "To", "From", "Message-ID", "X-Overture-Key", "List-Unsubscribe", "Content-Type", "A-Very-Long-Header-Name"]),
       _ASCII | _PRINTABLE | _WORDS | st.text(max_size=100))
def test_headers_are_written_byte_for_byte_as_compat32_writes_them(name: str, value: str) -> None:
    """The fast path for plain headers changes nothing: any value, short or long, plain, odd or not ASCII."""
    assert _folded(_CRLF, name, value) == _folded(_COMPAT32_CRLF, name, value)


@given(st.text(max_size=120), st.text(max_size=300), st.one_of(st.just(""), st.text(max_size=200)), st.booleans())
def test_whole_messages_are_the_bytes_compat32_writes(subject: str, text: str, html: str, unsubscribe: bool) -> None:
    """A built message (headers of every kind, parts, encodings) serialises to the same bytes as with compat32 itself."""
    message = outbound(subject=subject or "Hello", text_body=text, html_body=html)
    mime = SMTP.build(message)
    if unsubscribe:
        mime["List-Unsubscribe"] = "<https://overture.test/u/" + "t" * 90 + ">"
        mime["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    assert mime.as_bytes(policy=_CRLF) == mime.as_bytes(policy=_COMPAT32_CRLF)
