"""The SMTP email connector (aiosmtplib), over a pool of open sessions.

The SMTP conversation is driven step by step so that a failure is
classified precisely: anything before the DATA payload is sent is safe to
retry; a lost connection after it is in doubt. The Message-ID is derived
from the idempotency key, so a duplicate that did slip through would carry
the same id and be recognisable downstream.

Sessions come from :class:`~.smtp_pool.SmtpPool`. A pooled session the
server closed while it sat idle fails at MAIL, before anything was sent, so
the message is tried once more on a new session. A refusal (a 4xx or 5xx
reply to MAIL, RCPT or DATA) leaves the session usable; a broken or
timed-out conversation closes it.
"""

from __future__ import annotations

import email.charset
import email.errors
import email.policy
import hashlib
import re
import ssl
from email.header import Header
from email.message import EmailMessage, Message
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.utils import formataddr, formatdate, parseaddr
from typing import Any

import aiosmtplib
import pydantic

from overture.common.v1 import messaging_pb2
from overture_runtime.clock import Clock, SystemClock
from overture_runtime.config import ProviderConfig
from overture_runtime.links import configured_links

from .dkim_signing import DkimSigner
from .email_links import Additions, EmailLinks
from .plugin import ConnectorContext, ConnectorFailure, InDoubt, OutboundMessage, PermanentFailure, SendResult, TransientFailure
from .smtp_pool import SmtpPool, SmtpSession

__all__ = ["SmtpConnector", "SmtpPlugin", "SmtpSettings"]

_CLOSING = 421
"""The reply of a server that is closing the session (RFC 5321 §3.8)."""
_BODY = email.charset.Charset("utf-8")
_BODY.body_encoding = email.charset.QP  # readable in the raw message, and safe for long lines


_PLAIN_HEADER = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")


class _SmtpPolicy(email.policy.Compat32):
    """``compat32`` with SMTP's line ends, writing a header that folding
    would leave as it is without asking ``email.header.Header``: printable
    ASCII words between single spaces, within the line limit. Header's
    generic folder was 70% of building a message; every other header (long,
    encoded, odd whitespace) still goes through it, and the output is the
    same byte for byte (``tests/unit/connectors/test_email.py``)."""

    def _fold(self, name: str, value: Any, sanitize: bool) -> str:
        if isinstance(value, str) and len(name) + 2 + len(value) <= (self.max_line_length or 0) and _PLAIN_HEADER.fullmatch(value):
            return f"{name}: {value}{self.linesep}"
        return str(super()._fold(name, value, sanitize))  # type: ignore[misc]


_CRLF = _SmtpPolicy(linesep="\r\n")
_CRLF_UTF8 = email.policy.SMTPUTF8.clone(linesep="\r\n")
"""The policies messages are written with (SMTP's line ends), made once."""


class _Stale:
    """A pooled session turned out to be closed before anything was sent."""


_STALE = _Stale()


class SmtpConnector:
    """Email over SMTP, through a bounded pool of open sessions.

    Safe for concurrent sends; at most ``pool_size`` run at once, the
    others wait for a session.
    """

    name: str = "smtp"
    channel: messaging_pb2.Channel.ValueType = messaging_pb2.CHANNEL_EMAIL

    def __init__(
        self, *, host: str, port: int, sender: str, username: str | None = None, password: str | None = None,
        starttls: bool = False, timeout: float = 10.0, rate_limit_per_second: float = 0.0,
        tls_context: ssl.SSLContext | None = None, pool_size: int = 16, pool_idle_seconds: float = 30.0,
        pool_max_messages: int = 100, links: EmailLinks | None = None, dkim: DkimSigner | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._sender = sender
        self._links = links
        self._dkim = dkim
        self._clock = clock or SystemClock()
        self._from_header = formataddr(parseaddr(sender))
        self._envelope_sender = parseaddr(sender)[1]
        self._id_domain = self._envelope_sender.partition("@")[2] or "overture.local"
        self.rate_limit_per_second = rate_limit_per_second
        self.pool = SmtpPool(
            host=host, port=port, timeout=timeout, starttls=starttls, username=username, password=password,
            tls_context=tls_context, size=pool_size, max_idle=pool_idle_seconds, max_messages=pool_max_messages,
        )
        """The open sessions; :meth:`close` closes them."""

    def message_id(self, message: OutboundMessage) -> str:
        """The Message-ID of *message*, stable for its idempotency key."""
        digest = hashlib.sha256(f"{message.tenant}\x00{message.idempotency_key}".encode()).hexdigest()[:32]
        return f"<{digest}@{self._id_domain}>"

    def build(self, message: OutboundMessage) -> Message:
        """The MIME message for *message*: a text part, and an HTML alternative when there is one.

        Built with the classic MIME classes, about five times cheaper than
        ``EmailMessage``'s header registry. An address that needs SMTPUTF8
        gets ``EmailMessage`` with the SMTPUTF8 policy (UTF-8 headers, RFC 6532).
        The unsubscribe headers, the tracking pixel and tracked links are
        added as configured (:mod:`.email_links`).
        """
        extra = self._links.apply(message, now=self._clock.now()) if self._links else Additions({}, message.html_body, message.text_body)
        if not message.address.isascii():
            return self._build_utf8(message, extra)
        mime: Message = _text(extra.text_body, "plain")
        if extra.html_body:
            alternatives = MIMEMultipart("alternative")
            alternatives.attach(mime)
            alternatives.attach(_text(extra.html_body, "html"))
            mime = alternatives
        mime["From"] = self._from_header
        mime["To"] = message.address
        mime["Subject"] = message.subject if message.subject.isascii() else Header(message.subject, "utf-8")  # type: ignore[assignment]
        mime["Date"] = formatdate(usegmt=True)
        mime["Message-ID"] = self.message_id(message)
        mime["X-Overture-Key"] = message.idempotency_key
        for name, value in extra.headers.items():
            mime[name] = value
        return mime

    def payload(self, message: OutboundMessage) -> bytes:
        """The bytes sent for *message* (CRLF line ends), DKIM-signed when a key is configured."""
        mime = self.build(message)
        raw = mime.as_bytes(policy=_CRLF_UTF8 if isinstance(mime, EmailMessage) else _CRLF)
        return self._dkim.sign(raw) + raw if self._dkim else raw

    def _build_utf8(self, message: OutboundMessage, extra: Additions) -> EmailMessage:
        mime = EmailMessage(policy=email.policy.SMTPUTF8)
        mime["From"] = self._sender
        mime["To"] = message.address
        mime["Subject"] = message.subject
        mime["Date"] = formatdate(usegmt=True)
        mime["Message-ID"] = self.message_id(message)
        mime["X-Overture-Key"] = message.idempotency_key
        for name, value in extra.headers.items():
            mime[name] = value
        mime.set_content(extra.text_body)
        if extra.html_body:
            mime.add_alternative(extra.html_body, subtype="html")
        return mime

    async def send(self, message: OutboundMessage) -> SendResult:
        """Send *message*; see the module docstring for failure classes."""
        try:
            payload = self.payload(message)
        except (ValueError, email.errors.MessageError):
            raise PermanentFailure("the message cannot be encoded as email") from None
        message_id = self.message_id(message)
        for fresh in (False, True):
            try:
                async with self.pool.session(fresh=fresh) as session:
                    outcome = await self._transaction(session, message.address, payload, message_id)
            except (aiosmtplib.SMTPException, OSError) as error:
                raise TransientFailure(f"no SMTP session could be opened: {type(error).__name__}") from None
            if isinstance(outcome, ConnectorFailure):
                raise outcome
            if isinstance(outcome, SendResult):
                return outcome
        raise AssertionError("a new session is never stale")

    async def close(self) -> None:
        """Close the pooled sessions."""
        await self.pool.close()

    async def _transaction(self, session: SmtpSession, recipient: str, payload: bytes, message_id: str) -> SendResult | ConnectorFailure | _Stale:
        """One MAIL, RCPT, DATA exchange. Failures are returned, not raised, so
        that the pool keeps a session that only saw a refusal."""
        client = session.client
        if recipient.isascii():
            options: list[str] = []
            encoding = "ascii"
        elif client.supports_extension("smtputf8"):
            options, encoding = ["SMTPUTF8"], "utf-8"
        else:
            return PermanentFailure("the address needs SMTPUTF8, which the SMTP server does not offer")
        try:
            await client.mail(self._envelope_sender, options=options, encoding=encoding)
            await client.rcpt(recipient, encoding=encoding)
        except aiosmtplib.SMTPResponseException as error:
            if error.code == _CLOSING:
                session.discard()
                if session.reused:
                    return _STALE
            else:
                await _reset(session)
            what = "recipient refused" if isinstance(error, aiosmtplib.SMTPRecipientRefused) else "SMTP server refused the message"
            return _refused(error.code, what)
        except (aiosmtplib.SMTPException, OSError) as error:
            session.discard()
            if session.reused:
                return _STALE
            return TransientFailure(f"SMTP server unreachable: {type(error).__name__}")
        try:
            response = await client.data(payload)
        except aiosmtplib.SMTPResponseException as error:
            # The server answered the payload (or the DATA command) with a
            # refusal: it did not accept the message, and the session is reset.
            if error.code == _CLOSING:
                session.discard()
            return _refused(error.code, "SMTP server rejected the message")
        except (aiosmtplib.SMTPException, OSError) as error:
            session.discard()
            return InDoubt(f"connection lost after the message was sent: {type(error).__name__}", provider_message_id=message_id)
        session.messages += 1
        return SendResult(provider_message_id=message_id, detail=f"{response.code} {response.message[:120]}")

    async def status(self, provider_message_id: str) -> str | None:
        """SMTP has no status lookup: an in-doubt email stays in doubt."""
        return None


class SmtpSettings(pydantic.BaseModel, frozen=True, extra="forbid", validate_by_name=True):
    """An SMTP provider's settings; each one left out takes its ``OVERTURE_SMTP_*`` value."""

    host: str | None = None
    port: int | None = pydantic.Field(default=None, ge=1, le=65535)
    username: str | None = None
    password: pydantic.SecretStr | None = None
    starttls: bool | None = None
    sender: str | None = pydantic.Field(default=None, alias="from")
    """The From address, ``Name <address>``."""
    timeout_seconds: float | None = pydantic.Field(default=None, gt=0, le=600)
    pool_size: int | None = pydantic.Field(default=None, ge=1, le=1000)
    pool_idle_seconds: float | None = pydantic.Field(default=None, gt=0)
    pool_max_messages: int | None = pydantic.Field(default=None, ge=1)


class SmtpPlugin:
    """The ``smtp`` kind: email through an SMTP relay (entry point ``overture.connectors:smtp``)."""

    channel = messaging_pb2.CHANNEL_EMAIL
    settings_model = SmtpSettings

    def create(self, provider: ProviderConfig, settings: SmtpSettings, context: ConnectorContext) -> SmtpConnector:
        """An SMTP connector for *provider*."""
        s = context.settings
        password = settings.password or s.smtp_password
        connector = SmtpConnector(
            host=settings.host or s.smtp_host, port=settings.port or s.smtp_port, sender=settings.sender or s.smtp_from,
            username=settings.username or s.smtp_username, password=password.get_secret_value() if password else None,
            starttls=s.smtp_starttls if settings.starttls is None else settings.starttls,
            timeout=settings.timeout_seconds or s.smtp_timeout_seconds, pool_size=settings.pool_size or s.smtp_pool_size,
            pool_idle_seconds=settings.pool_idle_seconds or s.smtp_pool_idle_seconds,
            pool_max_messages=settings.pool_max_messages or s.smtp_pool_max_messages,
            rate_limit_per_second=provider.rate_limit_per_second, links=EmailLinks(configured_links(s)),
            dkim=_dkim(s.dkim_private_key.get_secret_value(), s.dkim_selector, s.dkim_domain, settings.sender or s.smtp_from)
            if s.dkim_private_key is not None else None,
            clock=context.clock,
        )
        connector.name = provider.name
        return connector


def _dkim(key: str, selector: str, domain: str, sender: str) -> DkimSigner:
    """The DKIM signer of a provider: the configured domain, else its sender's."""
    return DkimSigner(private_key=key, selector=selector, domain=domain or parseaddr(sender)[1].partition("@")[2])


def _text(body: str, subtype: str) -> MIMENonMultipart:
    part = MIMENonMultipart("text", subtype)
    part.set_payload(body, _BODY)
    return part


def _refused(code: int, what: str) -> TransientFailure | PermanentFailure:
    """A 4xx reply is a refusal for now (retry); anything else is for good."""
    if 400 <= code < 500:
        return TransientFailure(f"{what} for now ({code})")
    return PermanentFailure(f"{what} ({code})")


async def _reset(session: SmtpSession) -> None:
    """RSET after a refusal, so the session can carry the next message."""
    try:
        await session.client.rset()
    except (aiosmtplib.SMTPException, OSError):
        session.discard()
