"""The SMTP connector's pool of open sessions, against a real SMTP server
(aiosmtpd): reuse, replacement of broken sessions, bounds, STARTTLS and AUTH."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from overture.common.v1 import messaging_pb2
from overture.connectors.v1 import connector_service_pb2 as C
from overture_connectors.email import SmtpConnector
from overture_connectors.plugin import OutboundMessage, PermanentFailure, TransientFailure
from overture_connectors.smtp_pool import SmtpPool
from overture_runtime.config import Settings
from tests.conftest import admin_metadata

from .connectors_support import PASSWORD, USERNAME, CountingSink, connectors_service, email, self_signed_certificate

S = messaging_pb2
AUTH = admin_metadata()


def outbound(i: int, *, address: str = "") -> OutboundMessage:
    """A message for the connector itself, key ``run-<i>:send``."""
    return OutboundMessage(idempotency_key=f"run-{i}:send", tenant="acme", address=address or f"person{i}@example.com",
                           subject="Hello", text_body="Hello")


def connector(sink: CountingSink, **options: object) -> SmtpConnector:
    """An SMTP connector for *sink*."""
    return SmtpConnector(host="127.0.0.1", port=sink.port, sender="Overture <no-reply@overture.test>", timeout=5, **options)  # type: ignore[arg-type]


async def test_a_batch_reuses_a_few_sessions(make_settings: Callable[..., Settings]) -> None:
    """A batch of 200 emails travels over at most the pool's four sessions, not one session per message."""
    with CountingSink() as sink:
        async with connectors_service(make_settings, sink, smtp_pool_size=4, connector_concurrency=4) as service:
            response = await service.stub.SendBatch(C.SendBatchRequest(messages=[email(f"run-{i}:send") for i in range(200)]),
                                                    metadata=AUTH)
    assert {r.delivery.status for r in response.results} == {S.DELIVERY_STATUS_SENT}
    assert len(sink.keys) == 200
    assert 1 <= sink.counts.sessions <= 4


async def test_sessions_the_server_closed_are_replaced(make_settings: Callable[..., Settings]) -> None:
    """After the server drops every open session, the next batch opens new ones and delivers each message once, with no failure."""
    with CountingSink() as sink:
        async with connectors_service(make_settings, sink, smtp_pool_size=4, connector_concurrency=4) as service:
            first = await service.stub.SendBatch(C.SendBatchRequest(messages=[email(f"run-{i}:send") for i in range(50)]),
                                                 metadata=AUTH)
            before = sink.counts.sessions
            await sink.drop_sessions()
            second = await service.stub.SendBatch(C.SendBatchRequest(messages=[email(f"run-{i}:send") for i in range(50, 100)]),
                                                  metadata=AUTH)
    assert {r.delivery.status for r in [*first.results, *second.results]} == {S.DELIVERY_STATUS_SENT}
    assert {r.delivery.attempts for r in second.results} == {1}
    assert Counter(sink.keys) == Counter(f"run-{i}:send" for i in range(100))
    assert sink.counts.sessions > before


async def test_a_pooled_session_refused_at_mail_is_replaced_without_a_failure() -> None:
    """A server that ends each session after five messages (421 at MAIL) costs a new session, never a failed or repeated message."""
    with CountingSink() as sink:
        sink.max_messages_per_session = 5
        smtp = connector(sink, pool_size=1)
        try:
            results = [await smtp.send(outbound(i)) for i in range(23)]
        finally:
            await smtp.close()
    assert len(results) == 23
    assert Counter(sink.keys) == Counter(f"run-{i}:send" for i in range(23))
    assert sink.counts.sessions == 5


async def test_provider_calls_stay_within_the_connector_concurrency(make_settings: Callable[..., Settings]) -> None:
    """With a concurrency of 3, a batch of 60 never has more than three SMTP transactions or sessions open at once."""
    with CountingSink() as sink:
        sink.data_delay = 0.02
        async with connectors_service(make_settings, sink, smtp_pool_size=10, connector_concurrency=3) as service:
            response = await service.stub.SendBatch(C.SendBatchRequest(messages=[email(f"run-{i}:send") for i in range(60)]),
                                                    metadata=AUTH)
    assert len(sink.keys) == 60 and all(r.delivery.status == S.DELIVERY_STATUS_SENT for r in response.results)
    assert 1 < sink.counts.max_in_data <= 3
    assert sink.counts.max_sessions <= 3


async def test_the_pool_bounds_sessions_below_the_concurrency(make_settings: Callable[..., Settings]) -> None:
    """With a pool of 2 and a concurrency of 8, at most two sessions are ever open and the batch still completes."""
    with CountingSink() as sink:
        sink.data_delay = 0.01
        async with connectors_service(make_settings, sink, smtp_pool_size=2, connector_concurrency=8) as service:
            response = await service.stub.SendBatch(C.SendBatchRequest(messages=[email(f"run-{i}:send") for i in range(40)]),
                                                    metadata=AUTH)
    assert len(sink.keys) == 40 and all(r.delivery.status == S.DELIVERY_STATUS_SENT for r in response.results)
    assert sink.counts.max_sessions <= 2 and sink.counts.sessions <= 2


async def test_auth_happens_once_per_session() -> None:
    """With AUTH required, the connector logs in once per session and sends many messages on each."""
    with CountingSink(require_auth=True) as sink:
        smtp = connector(sink, username=USERNAME, password=PASSWORD, pool_size=2)
        try:
            await asyncio.gather(*(smtp.send(outbound(i)) for i in range(30)))
        finally:
            await smtp.close()
    assert len(sink.keys) == 30
    assert sink.counts.logins == sink.counts.sessions <= 2


async def test_starttls_and_auth_once_per_session(tmp_path: Path) -> None:
    """Against a server that requires STARTTLS and AUTH, each session upgrades and logs in once, then carries many messages."""
    server_tls, client_tls = self_signed_certificate(tmp_path)
    with CountingSink(require_auth=True, tls_context=server_tls) as sink:
        smtp = connector(sink, username=USERNAME, password=PASSWORD, starttls=True, tls_context=client_tls, pool_size=2)
        try:
            await asyncio.gather(*(smtp.send(outbound(i)) for i in range(20)))
        finally:
            await smtp.close()
    assert len(sink.keys) == 20
    assert sink.counts.logins == sink.counts.sessions <= 2


async def test_a_wrong_password_fails_for_now_not_for_good() -> None:
    """A session that cannot log in is a failure before anything was sent: retryable, never a permanent failure of the message."""
    with CountingSink(require_auth=True) as sink:
        smtp = connector(sink, username=USERNAME, password="wrong", pool_size=1)
        try:
            with pytest.raises(TransientFailure):
                await smtp.send(outbound(1))
        finally:
            await smtp.close()
    assert sink.keys == []


async def test_a_refused_recipient_leaves_the_session_usable() -> None:
    """A 550 for one recipient fails that message for good, and the same session carries the next ones."""
    with CountingSink() as sink:
        sink.refuse.add("nobody@example.com")
        smtp = connector(sink, pool_size=1)
        try:
            await smtp.send(outbound(1))
            with pytest.raises(PermanentFailure):
                await smtp.send(outbound(2, address="nobody@example.com"))
            await smtp.send(outbound(3))
        finally:
            await smtp.close()
    assert sink.keys == ["run-1:send", "run-3:send"]
    assert sink.counts.sessions == 1


async def test_a_session_is_replaced_after_its_message_limit() -> None:
    """With at most ten messages per session, 35 messages sent one after another use four sessions."""
    with CountingSink() as sink:
        smtp = connector(sink, pool_size=1, pool_max_messages=10)
        try:
            for i in range(35):
                await smtp.send(outbound(i))
        finally:
            await smtp.close()
    assert len(sink.keys) == 35
    assert sink.counts.sessions == 4


async def test_an_idle_session_is_closed_instead_of_reused() -> None:
    """A session idle past the pool's limit (on its injected clock) is closed, and the next sender gets a new one."""
    now = [100.0]
    with CountingSink() as sink:
        pool = SmtpPool(host="127.0.0.1", port=sink.port, timeout=5, size=2, max_idle=30, monotonic=lambda: now[0])
        try:
            async with pool.session() as first:
                pass
            async with pool.session() as again:
                assert again is first
            now[0] += 31
            async with pool.session() as later:
                assert later is not first
            assert (pool.opened, pool.open_sessions) == (2, 1)
        finally:
            await pool.close()
    assert pool.open_sessions == 0


async def test_closing_the_connector_ends_its_sessions() -> None:
    """Closing the connector says QUIT on every idle session, so the server sees no session left open."""
    with CountingSink() as sink:
        smtp = connector(sink, pool_size=3)
        await asyncio.gather(*(smtp.send(outbound(i)) for i in range(9)))
        await smtp.close()
        for _ in range(100):
            if not sink.counts.live:
                break
            await asyncio.sleep(0.01)
        assert not sink.counts.live
    assert smtp.pool.open_sessions == 0
