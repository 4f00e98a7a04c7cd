"""A local mail sink for development, the way Mailpit serves developers:
an SMTP server (aiosmtpd) that keeps every message it receives as an
``.eml`` file and announces it."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from overture_runtime.privacy import mask

__all__ = ["MailSink"]


class _Handler:
    def __init__(self, folder: Path, announce: Callable[[str], None]) -> None:
        self._folder = folder
        self._announce = announce
        self._counter = itertools.count(1)
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content: bytes = envelope.original_content or envelope.content
        message = message_from_bytes(content, policy=default_policy)
        path = self._folder / f"{time.strftime('%Y%m%dT%H%M%S')}-{next(self._counter):04d}.eml"
        path.write_bytes(content)
        self.messages.append(message)  # type: ignore[arg-type]
        recipients = ", ".join(mask(r) for r in envelope.rcpt_tos)
        self._announce(f"mail to {recipients}: {message.get('Subject', '')!r} saved as {path}")
        return "250 Message accepted for delivery"


class MailSink:
    """An SMTP server on 127.0.0.1 that saves what it receives under *folder*."""

    def __init__(self, folder: Path, *, port: int = 0, announce: Callable[[str], None] = print) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._handler = _Handler(folder, announce)
        self._controller = Controller(self._handler, hostname="127.0.0.1", port=port or _free_port())
        self.port = self._controller.port
        self.running = False

    @property
    def messages(self) -> list[EmailMessage]:
        """The messages received so far, oldest first."""
        return list(self._handler.messages)

    def start(self) -> None:
        """Start serving in a background thread."""
        self._controller.start()
        self.running = True

    def stop(self) -> None:
        """Stop serving."""
        self._controller.stop()
        self.running = False


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
