"""The SMTP email connector (aiosmtplib).

The SMTP conversation is driven step by step so that a failure is
classified precisely: anything before the DATA payload is sent is safe to
retry; a lost connection after it is in doubt. The Message-ID is derived
from the idempotency key, so a duplicate that did slip through would carry
the same id and be recognisable downstream.
"""

from __future__ import annotations

import hashlib
from email.message import EmailMessage
from email.utils import formatdate, parseaddr

import aiosmtplib

from overture.common.v1 import messaging_pb2

from .plugin import InDoubt, OutboundMessage, PermanentFailure, SendResult, TransientFailure

__all__ = ["SmtpConnector"]


class SmtpConnector:
    """Email over SMTP. One connection per message; not pooled."""

    name: str = "smtp"
    channel: messaging_pb2.Channel.ValueType = messaging_pb2.CHANNEL_EMAIL

    def __init__(
        self, *, host: str, port: int, sender: str, username: str | None = None, password: str | None = None,
        starttls: bool = False, timeout: float = 10.0, rate_limit_per_second: float = 0.0,
    ) -> None:
        self._host = host
        self._port = port
        self._sender = sender
        self._username = username
        self._password = password
        self._starttls = starttls
        self._timeout = timeout
        self.rate_limit_per_second = rate_limit_per_second

    def message_id(self, message: OutboundMessage) -> str:
        """The Message-ID of *message*, stable for its idempotency key."""
        digest = hashlib.sha256(f"{message.tenant}\x00{message.idempotency_key}".encode()).hexdigest()[:32]
        domain = parseaddr(self._sender)[1].partition("@")[2] or "overture.local"
        return f"<{digest}@{domain}>"

    def build(self, message: OutboundMessage) -> EmailMessage:
        """The MIME message for *message*."""
        mime = EmailMessage()
        mime["From"] = self._sender
        mime["To"] = message.address
        mime["Subject"] = message.subject
        mime["Date"] = formatdate(usegmt=True)
        mime["Message-ID"] = self.message_id(message)
        mime["X-Overture-Key"] = message.idempotency_key
        mime.set_content(message.text_body or "")
        if message.html_body:
            mime.add_alternative(message.html_body, subtype="html")
        return mime

    async def send(self, message: OutboundMessage) -> SendResult:
        """Send *message*; see the module docstring for failure classes."""
        mime = self.build(message)
        sender = parseaddr(self._sender)[1]
        client = aiosmtplib.SMTP(hostname=self._host, port=self._port, timeout=self._timeout, start_tls=False)
        try:
            await client.connect()
            if self._starttls:
                await client.starttls()
            if self._username and self._password:
                await client.login(self._username, self._password)
            await client.mail(sender)
            await client.rcpt(message.address)
        except aiosmtplib.SMTPRecipientRefused as error:
            _close(client)
            raise _refused(error.code, "recipient refused") from None
        except aiosmtplib.SMTPResponseException as error:
            _close(client)
            raise _refused(error.code, "SMTP server refused the message") from None
        except (aiosmtplib.SMTPException, OSError) as error:
            _close(client)
            raise TransientFailure(f"SMTP server unreachable: {type(error).__name__}") from None
        try:
            response = await client.data(mime.as_bytes())
        except aiosmtplib.SMTPResponseException as error:
            # The server answered the payload with a refusal: it did not accept it.
            _close(client)
            raise _refused(error.code, "SMTP server rejected the message") from None
        except (aiosmtplib.SMTPException, OSError) as error:
            _close(client)
            raise InDoubt(f"connection lost after the message was sent: {type(error).__name__}") from None
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            pass
        return SendResult(provider_message_id=mime["Message-ID"], detail=f"{response.code} {response.message[:120]}")

    async def status(self, provider_message_id: str) -> str | None:
        """SMTP has no status lookup: an in-doubt email stays in doubt."""
        return None


def _refused(code: int, what: str) -> TransientFailure | PermanentFailure:
    """A 4xx reply is a refusal for now (retry); anything else is for good."""
    if 400 <= code < 500:
        return TransientFailure(f"{what} for now ({code})")
    return PermanentFailure(f"{what} ({code})")


def _close(client: aiosmtplib.SMTP) -> None:
    if client.is_connected:
        client.close()
