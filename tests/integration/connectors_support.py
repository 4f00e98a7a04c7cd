"""What the connectors tests share: a real SMTP server (aiosmtpd) that counts
sessions and can misbehave on purpose, and the connectors service in-process."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
import subprocess
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import grpc
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from overture.common.v1 import messaging_pb2
from overture.connectors.v1 import connector_service_pb2_grpc, delivery_pb2
from overture_connectors import ConnectorsApp
from overture_runtime.clock import Clock
from overture_runtime.config import Settings
from overture_runtime.testing import free_port, serving

__all__ = ["PASSWORD", "USERNAME", "CountingSink", "Service", "connectors_service", "email", "keys_of", "self_signed_certificate"]

USERNAME, PASSWORD = "overture", "s3cret"


@dataclass
class _Counts:
    lock: threading.Lock = field(default_factory=threading.Lock)
    live: set[Any] = field(default_factory=set)
    sessions: int = 0
    max_sessions: int = 0
    logins: int = 0
    in_data: int = 0
    max_in_data: int = 0
    keys: list[str] = field(default_factory=list)
    per_session: Counter[int] = field(default_factory=Counter)
    """Messages carried by each connection, by its serial number (not its id(), which a later connection may reuse)."""


class _Handler:
    def __init__(self, sink: CountingSink) -> None:
        self._sink = sink

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]) -> list[str]:
        # A session counts from its first EHLO: aiosmtpd's own start-up probe
        # connects without one. STARTTLS repeats EHLO on the same session.
        session.host_name = hostname
        counts = self._sink.counts
        with counts.lock:
            if server not in counts.live:
                counts.live.add(server)
                counts.sessions += 1
                counts.max_sessions = max(counts.max_sessions, len(counts.live))
        return responses

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]) -> str:
        limit = self._sink.max_messages_per_session
        if limit and self._sink.counts.per_session[server.serial] >= limit:
            asyncio.get_running_loop().call_soon(server.transport.close)
            return "421 4.7.0 Too many messages on this connection"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        if address in self._sink.refuse:
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        counts = self._sink.counts
        with counts.lock:
            counts.in_data += 1
            counts.max_in_data = max(counts.max_in_data, counts.in_data)
        try:
            if self._sink.data_delay:
                await asyncio.sleep(self._sink.data_delay)
            message = message_from_bytes(envelope.original_content or envelope.content, policy=default_policy)
            key = str(message["X-Overture-Key"])
            with counts.lock:
                counts.keys.append(key)
                counts.per_session[server.serial] += 1
            if key in self._sink.drop_after_data:
                server.transport.close()  # the message arrived, but the client never hears so
        finally:
            with counts.lock:
                counts.in_data -= 1
        return "250 Message accepted for delivery"


class _CountingSMTP(SMTP):  # type: ignore[misc]
    _serials = itertools.count()

    def __init__(self, *args: Any, sink: CountingSink, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sink = sink
        self.serial = next(self._serials)

    def connection_lost(self, error: Exception | None) -> None:
        with self._sink.counts.lock:
            self._sink.counts.live.discard(self)
        super().connection_lost(error)


class _Controller(Controller):  # type: ignore[misc]
    def __init__(self, sink: CountingSink, **kwargs: Any) -> None:
        super().__init__(_Handler(sink), hostname="127.0.0.1", port=sink.port, **kwargs)
        self._sink = sink

    def factory(self) -> SMTP:
        return _CountingSMTP(self.handler, sink=self._sink, **self.SMTP_kwargs)


class CountingSink:
    """An SMTP server on 127.0.0.1 that records each message's ``X-Overture-Key``
    and counts sessions, logins and concurrent transactions.

    *require_auth* offers AUTH PLAIN/LOGIN (``overture``/``s3cret``), and
    requires it when *tls_context* is given, which offers and requires STARTTLS. Runs in its own
    thread (aiosmtpd's controller); counts are read under a lock.
    """

    def __init__(self, *, require_auth: bool = False, tls_context: ssl.SSLContext | None = None) -> None:
        self.port = free_port()
        self.counts = _Counts()
        self.refuse: set[str] = set()
        """Recipients answered with 550."""
        self.drop_after_data: set[str] = set()
        """Keys whose message is received but whose session is then closed before the reply."""
        self.max_messages_per_session = 0
        """When set, MAIL on a session that carried this many messages gets 421 and the session closes."""
        self.data_delay = 0.0
        """Seconds each DATA takes, so that concurrent transactions overlap."""
        kwargs: dict[str, Any] = {}
        if require_auth:
            # Offered, not required, over plain text: aiosmtpd warns about
            # requiring it without TLS. The connector logs in either way.
            kwargs.update(authenticator=self._authenticate, auth_required=tls_context is not None,
                          auth_require_tls=tls_context is not None)
        if tls_context is not None:
            kwargs.update(tls_context=tls_context, require_starttls=True)
        self._kwargs = kwargs
        self._controller: _Controller | None = None

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.login == USERNAME.encode() and auth_data.password == PASSWORD.encode()
        if ok:
            with self.counts.lock:
                self.counts.logins += 1
        return AuthResult(success=ok)

    def start(self) -> None:
        """Listen (again) on the sink's port."""
        self._controller = _Controller(self, **self._kwargs)
        self._controller.start()

    def stop(self) -> None:
        """Stop listening and close every session."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    async def drop_sessions(self) -> None:
        """Close every open session from the server's side, as a relay restart would."""
        assert self._controller is not None
        loop = self._controller.loop

        async def close_all() -> None:
            for server in list(self.counts.live):
                if server.transport is not None:
                    server.transport.close()

        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(close_all(), loop))

    @property
    def keys(self) -> list[str]:
        """The keys of the messages received, in arrival order."""
        with self.counts.lock:
            return list(self.counts.keys)

    def __enter__(self) -> CountingSink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def self_signed_certificate(folder: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server and a client TLS context for 127.0.0.1, from a throwaway
    self-signed certificate made with the ``openssl`` command."""
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(str(cert), str(key))
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


def email(key: str, *, address: str = "", subject_id: str = "", connector: str = "") -> delivery_pb2.Message:
    """An email message with idempotency key *key*."""
    return delivery_pb2.Message(
        idempotency_key=key, channel=messaging_pb2.CHANNEL_EMAIL, subject_id=subject_id or f"subject-{key}",
        address=address or f"{key.replace(':', '-')}@example.com", connector=connector,
        content=delivery_pb2.MessageContent(subject="Hello", text_body=f"Hello {key}"),
        category=messaging_pb2.MESSAGE_CATEGORY_TRANSACTIONAL,
    )


@dataclass
class Service:
    """The connectors service in-process: its stub, its app and its address."""

    stub: connector_service_pb2_grpc.ConnectorServiceStub
    app: ConnectorsApp
    address: str


@contextlib.asynccontextmanager
async def connectors_service(make_settings: Callable[..., Settings], sink: CountingSink, *, clock: Clock | None = None,
                             **overrides: Any) -> AsyncIterator[Service]:
    """Serve ConnectorsApp on this test's database, sending to *sink* (the default SMTP port), on *clock* when given."""
    settings = make_settings(smtp_port=sink.port, **overrides)
    app = ConnectorsApp(settings, clock=clock)
    async with serving(app, settings) as address, grpc.aio.insecure_channel(address) as channel:
        yield Service(connector_service_pb2_grpc.ConnectorServiceStub(channel), app, address)


def keys_of(results: Iterable[Any]) -> list[str]:
    """The idempotency keys of the deliveries in *results*."""
    return [r.delivery.idempotency_key for r in results]
