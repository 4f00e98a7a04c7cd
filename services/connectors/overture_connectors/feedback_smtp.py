"""An SMTP server (aiosmtpd) that takes in bounces and complaints: point
the envelope sender's domain (the Return-Path) or a feedback loop at it.

It runs in the connectors service's own event loop on
``OVERTURE_FEEDBACK_SMTP_PORT``. Every message received is read by
:class:`~.feedback.FeedbackIntake`; a message is answered 250 once taken
(also when it is not a report: there is nothing to retry), and 451 when
the orchestrator could not take it, so the sending server tries again
later. Messages over :data:`~.bounce_reports.MAX_REPORT` are refused with 552.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import structlog
from aiosmtpd.smtp import SMTP

from overture_runtime.errors import Unavailable

from .bounce_reports import MAX_REPORT
from .feedback import FeedbackIntake

__all__ = ["FeedbackSmtpServer"]

log = structlog.get_logger("overture.connectors.feedback")


class _Handler:
    def __init__(self, intake: FeedbackIntake) -> None:
        self._intake = intake

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        try:
            await self._intake.take(raw if isinstance(raw, bytes) else str(raw).encode())
        except Unavailable:
            return "451 4.3.0 Try again later"
        except Exception:
            log.exception("feedback.smtp_error")
            return "451 4.3.0 Try again later"
        return "250 2.0.0 Report taken"


class FeedbackSmtpServer:
    """Listens on *host*:*port* until closed. Not thread-safe: one per event loop."""

    def __init__(self, intake: FeedbackIntake, *, host: str, port: int, hostname: str = "overture-feedback") -> None:
        self._intake = intake
        self._host = host
        self._port = port
        self._hostname = hostname
        self._server: asyncio.Server | None = None
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self.port = 0
        """The port listened on, once started."""

    async def start(self) -> None:
        """Start listening."""
        handler = _Handler(self._intake)

        def session() -> SMTP:
            protocol = SMTP(handler, data_size_limit=MAX_REPORT, hostname=self._hostname, enable_SMTPUTF8=True, timeout=60)
            self._sessions.add(protocol)
            return protocol

        self._server = await asyncio.get_running_loop().create_server(session, host=self._host, port=self._port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and close open sessions."""
        if self._server is not None:
            self._server.close()
            for session in list(self._sessions):
                if session.transport is not None:
                    session.transport.close()
            await self._server.wait_closed()
