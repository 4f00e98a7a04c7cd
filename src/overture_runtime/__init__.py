"""Overture's shared runtime: config, logging, the server bootstrap, errors,
auth, storage (database and Redis), clients, time and ids.

Every service builds on this package; none copies it.
"""

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
