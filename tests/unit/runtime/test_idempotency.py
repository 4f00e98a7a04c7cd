"""Tests of :mod:`overture_runtime.idempotency` against a scratch PostgreSQL database."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import pytest
import sqlalchemy as sa

from overture.connectors.v1 import connector_service_pb2 as pb
from overture.connectors.v1 import delivery_pb2
from overture_runtime.clock import ManualClock
from overture_runtime.db import Database
from overture_runtime.errors import FailedPrecondition
from overture_runtime.idempotency import Idempotency, idempotency_table

METHOD = "/overture.connectors.v1.ConnectorService/Send"


@dataclass
class Harness:
    """An Idempotency over a fresh table, and a compute function that counts its calls."""

    idempotency: Idempotency
    db: Database
    table: sa.Table
    clock: ManualClock
    computed: int = 0

    def compute(self, delivery_id: str = "d-1") -> Callable[[], Awaitable[pb.SendResponse]]:
        async def run() -> pb.SendResponse:
            self.computed += 1
            return pb.SendResponse(delivery=delivery_pb2.Delivery(delivery_id=f"{delivery_id}#{self.computed}"))

        return run

    async def run(self, request: pb.SendRequest, *, request_id: str = "req-1", tenant: str = "acme", method: str = METHOD,
                  compute: Callable[[], Awaitable[pb.SendResponse]] | None = None) -> pb.SendResponse:
        return await self.idempotency.run(
            tenant=tenant, method=method, request_id=request_id, request=request, response_type=pb.SendResponse,
            compute=compute or self.compute(),
        )

    async def rows(self) -> list[sa.Row]:  # type: ignore[type-arg]
        async with self.db.connect() as conn:
            return list((await conn.execute(sa.select(self.table))).all())


@pytest.fixture
async def harness(database_url: str) -> AsyncIterator[Harness]:
    """An Idempotency on a t_idempotency table in this test's scratch database."""
    db = Database(database_url)
    metadata = sa.MetaData()
    table = idempotency_table(metadata, "t")
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        clock = ManualClock()
        yield Harness(Idempotency(db, table, clock), db, table, clock)
    finally:
        await db.close()


def _request(key: str = "run-1:step-a", **metadata: str) -> pb.SendRequest:
    return pb.SendRequest(message=delivery_pb2.Message(idempotency_key=key, subject_id="s-1", metadata=metadata))


def test_table_is_named_by_prefix() -> None:
    """idempotency_table creates <prefix>_idempotency keyed by tenant, method and request id."""
    table = idempotency_table(sa.MetaData(), "rules")
    assert table.name == "rules_idempotency"
    assert [c.name for c in table.primary_key.columns] == ["tenant", "method", "request_id"]


async def test_first_call_computes_and_stores_the_response(harness: Harness) -> None:
    """The first call with a request id runs compute once and stores its response with the claim time."""
    response = await harness.run(_request())
    assert response.delivery.delivery_id == "d-1#1"
    assert harness.computed == 1
    [row] = await harness.rows()
    assert (row.tenant, row.method, row.request_id) == ("acme", METHOD, "req-1")
    assert pb.SendResponse.FromString(row.response) == response
    assert row.create_time == harness.clock.now()


async def test_repeat_returns_the_stored_response_without_computing(harness: Harness) -> None:
    """A repeat of the same request with the same id returns the first response and does not run compute again."""
    first = await harness.run(_request())
    harness.clock.advance(timedelta(minutes=5))
    second = await harness.run(_request(), compute=harness.compute("other"))
    assert second == first
    assert harness.computed == 1


async def test_request_digest_ignores_map_insertion_order(harness: Harness) -> None:
    """The same request built with map entries in another order counts as the same request."""
    first = await harness.run(_request(run_id="r1", journey="welcome"))
    second = await harness.run(_request(journey="welcome", run_id="r1"))
    assert second == first
    assert harness.computed == 1


async def test_empty_response_is_replayed(harness: Harness) -> None:
    """A response with every field at its default is stored and replayed like any other."""
    async def empty() -> pb.SendResponse:
        harness.computed += 1
        return pb.SendResponse()

    assert await harness.run(_request(), compute=empty) == pb.SendResponse()
    assert await harness.run(_request(), compute=empty) == pb.SendResponse()
    assert harness.computed == 1


async def test_reusing_an_id_for_a_different_request_fails(harness: Harness) -> None:
    """A different request with a used request id is FailedPrecondition REQUEST_ID_REUSED, and compute does not run."""
    await harness.run(_request("run-1:step-a"))
    with pytest.raises(FailedPrecondition) as caught:
        await harness.run(_request("run-1:step-b"))
    assert caught.value.reason == "REQUEST_ID_REUSED"
    assert harness.computed == 1


async def test_without_a_request_id_every_call_computes(harness: Harness) -> None:
    """Without a request id nothing is stored and each call runs compute."""
    first = await harness.run(_request(), request_id="")
    second = await harness.run(_request(), request_id="")
    assert (first.delivery.delivery_id, second.delivery.delivery_id) == ("d-1#1", "d-1#2")
    assert await harness.rows() == []


async def test_ids_are_scoped_by_tenant_and_method(harness: Harness) -> None:
    """The same request id under another tenant or method is a separate request."""
    await harness.run(_request())
    await harness.run(_request("other"), tenant="globex")
    await harness.run(_request("other"), method="/overture.connectors.v1.ConnectorService/Other")
    assert harness.computed == 3
    assert len(await harness.rows()) == 3


async def test_failed_compute_releases_the_claim(harness: Harness) -> None:
    """When compute raises, the error propagates, the claim is released, and a retry with the same id runs compute."""
    async def boom() -> pb.SendResponse:
        harness.computed += 1
        raise RuntimeError("provider down")

    with pytest.raises(RuntimeError, match="provider down"):
        await harness.run(_request(), compute=boom)
    assert await harness.rows() == []
    response = await harness.run(_request())
    assert response.delivery.delivery_id == "d-1#2"
    assert harness.computed == 2


async def test_concurrent_repeat_is_told_the_request_is_in_progress(harness: Harness) -> None:
    """A repeat arriving while the first call still computes is FailedPrecondition REQUEST_IN_PROGRESS."""
    inner: list[FailedPrecondition] = []

    async def reentrant() -> pb.SendResponse:
        with pytest.raises(FailedPrecondition) as caught:
            await harness.run(_request(), compute=harness.compute("nested"))
        inner.append(caught.value)
        return pb.SendResponse(duplicate=False, delivery=delivery_pb2.Delivery(delivery_id="outer"))

    response = await harness.run(_request(), compute=reentrant)
    assert response.delivery.delivery_id == "outer"
    assert [error.reason for error in inner] == ["REQUEST_IN_PROGRESS"]
    assert harness.computed == 0
    assert (await harness.run(_request())).delivery.delivery_id == "outer"


async def test_a_claim_abandoned_by_a_dead_call_is_taken_over(harness: Harness) -> None:
    """A claim with no response that is older than the claim timeout belongs to a call that died: a retry runs the work."""
    request = pb.SendRequest()
    async with harness.db.begin() as conn:
        await conn.execute(harness.table.insert().values(
            tenant="acme", method=METHOD, request_id="req-1", request_digest=hashlib.sha256(
                request.SerializeToString(deterministic=True)).hexdigest(), response=None, create_time=harness.clock.now()))
    with pytest.raises(FailedPrecondition):
        await harness.run(request)
    harness.clock.advance(timedelta(minutes=2))
    response = await harness.run(request)
    assert harness.computed == 1 and response.delivery.delivery_id == "d-1#1"
    assert (await harness.run(request)) == response
