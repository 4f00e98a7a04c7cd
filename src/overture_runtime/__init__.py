"""Overture's shared runtime: config, logging, the server bootstrap, errors,
auth, storage (database and Redis), clients, time and ids.

Every service builds on this package; none copies it.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import BaseApp
    from .auth import Principal, TokenTable
    from .clock import Clock, IdGenerator, ManualClock, SystemClock, new_id
    from .config import SERVICES, ServiceName, Settings, TokenGrant, load_settings
    from .context import current_call, current_principal, current_tenant
    from .errors import (
        AlreadyExists,
        FailedPrecondition,
        FieldViolation,
        InvalidArgument,
        NotFound,
        OvertureError,
        PermissionDenied,
        ResourceExhausted,
        Unauthenticated,
        Unavailable,
        Unimplemented,
        Violations,
    )
    from .server import Server, ServiceApp, serve

_LAZY = {
    "AlreadyExists": ".errors",
    "BaseApp": ".app",
    "Clock": ".clock",
    "FailedPrecondition": ".errors",
    "FieldViolation": ".errors",
    "IdGenerator": ".clock",
    "InvalidArgument": ".errors",
    "ManualClock": ".clock",
    "NotFound": ".errors",
    "OvertureError": ".errors",
    "PermissionDenied": ".errors",
    "Principal": ".auth",
    "ResourceExhausted": ".errors",
    "SERVICES": ".config",
    "Server": ".server",
    "ServiceApp": ".server",
    "ServiceName": ".config",
    "Settings": ".config",
    "SystemClock": ".clock",
    "TokenGrant": ".config",
    "TokenTable": ".auth",
    "Unauthenticated": ".errors",
    "Unavailable": ".errors",
    "Unimplemented": ".errors",
    "Violations": ".errors",
    "current_call": ".context",
    "current_principal": ".context",
    "current_tenant": ".context",
    "load_settings": ".config",
    "new_id": ".clock",
    "serve": ".server",
}
"""Where each public name lives. They are imported on first use, so that
importing one light module (``overture_runtime.errors``, say) does not pull
in grpc, SQLAlchemy and Redis for a command-line tool's start-up."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "SERVICES",
    "AlreadyExists",
    "BaseApp",
    "Clock",
    "FailedPrecondition",
    "FieldViolation",
    "IdGenerator",
    "InvalidArgument",
    "ManualClock",
    "NotFound",
    "OvertureError",
    "PermissionDenied",
    "Principal",
    "ResourceExhausted",
    "Server",
    "ServiceApp",
    "ServiceName",
    "Settings",
    "SystemClock",
    "TokenGrant",
    "TokenTable",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Violations",
    "current_call",
    "current_principal",
    "current_tenant",
    "load_settings",
    "new_id",
    "serve",
]
