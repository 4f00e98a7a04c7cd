"""Unit tests of :mod:`overture_runtime.context`: the state of the call being served."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from overture_runtime.auth import Principal
from overture_runtime.context import CallState, current_call, current_principal, current_tenant, reset_call, set_call
from overture_runtime.errors import Unauthenticated

PRINCIPAL = Principal(name="svc:test", tenant="acme", roles=frozenset({"rules.read"}))


def test_no_call_outside_a_call() -> None:
    """Outside any call there is no call state."""
    assert current_call() is None


def test_current_principal_outside_a_call_is_unauthenticated() -> None:
    """current_principal raises Unauthenticated NO_PRINCIPAL when no call is being served."""
    with pytest.raises(Unauthenticated) as caught:
        current_principal()
    assert caught.value.reason == "NO_PRINCIPAL"


def test_current_principal_before_authentication_is_unauthenticated() -> None:
    """A call whose caller is not yet authenticated has no principal."""
    token = set_call(CallState(method="/overture.x.v1.S/M", request_id="r"))
    try:
        with pytest.raises(Unauthenticated):
            current_tenant()
    finally:
        reset_call(token)


def test_set_and_reset_call() -> None:
    """set_call binds the state, current_principal and current_tenant read it, and reset_call unbinds it."""
    state = CallState(method="/overture.x.v1.S/M", request_id="r1", principal=PRINCIPAL)
    token = set_call(state)
    try:
        assert current_call() is state
        assert current_principal() is PRINCIPAL
        assert current_tenant() == "acme"
    finally:
        reset_call(token)
    assert current_call() is None


def test_call_state_starts_ok() -> None:
    """A new call state has status OK, no reason, no error id and no principal."""
    state = CallState(method="/m", request_id="r")
    assert (state.code, state.reason, state.error_id, state.principal) == (grpc.StatusCode.OK, "", "", None)


async def test_call_state_is_per_task() -> None:
    """A call state bound in one task is not visible in another task."""
    async def serve(tenant: str, ready: asyncio.Event, other_ready: asyncio.Event) -> str:
        set_call(CallState(method="/m", request_id=tenant, principal=Principal(name=tenant, tenant=tenant, roles=frozenset())))
        ready.set()
        await other_ready.wait()
        return current_tenant()

    a_ready, b_ready = asyncio.Event(), asyncio.Event()
    results = await asyncio.gather(serve("acme", a_ready, b_ready), serve("globex", b_ready, a_ready))
    assert results == ["acme", "globex"]
    assert current_call() is None
