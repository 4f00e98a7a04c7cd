"""The state of the RPC being served, carried in a contextvar.

The server interceptors create a :class:`CallState` per call; servicers read
the caller's tenant and principal through :func:`current_principal`.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass

import grpc

from .auth import Principal
from .errors import Unauthenticated

__all__ = ["CallState", "current_call", "current_principal", "current_tenant"]


@dataclass
class CallState:
    """What the interceptors know about the call being served. Mutable: the
    inner interceptors fill in the principal and the outcome."""

    method: str
    """The full method, for example ``/overture.rules.v1.RulesService/Evaluate``."""
    request_id: str
    """The caller's ``x-request-id``, or one generated for the call."""
    principal: Principal | None = None
    """The authenticated caller, once the auth interceptor has run."""
    code: grpc.StatusCode = grpc.StatusCode.OK
    """The status the call ended with."""
    reason: str = ""
    """The ``ErrorInfo`` reason of a failed call."""
    error_id: str = ""
    """The id under which an unexpected error was logged."""
    metadata: dict[str, str] | None = None
    """The call's text metadata, read once by the outermost interceptor."""


_call: ContextVar[CallState | None] = ContextVar("overture_call", default=None)


def current_call() -> CallState | None:
    """The state of the RPC being served in this task, if any."""
    return _call.get()


def current_principal() -> Principal:
    """The authenticated caller of the RPC being served.

    Raises :class:`Unauthenticated` outside an authenticated call, so a
    servicer can never act without a tenant by mistake.
    """
    state = _call.get()
    if state is None or state.principal is None:
        raise Unauthenticated("no authenticated caller for this call", reason="NO_PRINCIPAL")
    return state.principal


def current_tenant() -> str:
    """The tenant of the RPC being served."""
    return current_principal().tenant


def set_call(state: CallState) -> Token[CallState | None]:
    """Bind *state* to this task; returns the token to reset it with."""
    return _call.set(state)


def reset_call(token: Token[CallState | None]) -> None:
    """Undo :func:`set_call`."""
    _call.reset(token)
