"""How the CLI reaches Overture: addresses and token.

The token comes from ``--token``, then ``OVERTURE_TOKEN``, then the file
``overture dev`` writes (``.overture/dev.json``); addresses from
``OVERTURE_<SERVICE>_ADDRESS``, then that file, then the default ports.

grpc is imported when a channel is first opened, not with this module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .output import CliError, Problem, fail

if TYPE_CHECKING:
    import grpc

__all__ = ["DEV_FILE", "SERVICES", "Target", "fail", "new_request_id", "rpc_error", "target"]

DEV_FILE = Path(".overture") / "dev.json"
_DEFAULTS = {"ingest": "127.0.0.1:50051", "rules": "127.0.0.1:50052", "orchestrator": "127.0.0.1:50053", "connectors": "127.0.0.1:50054"}
SERVICES = tuple(_DEFAULTS)
"""The four services, in start order (the same as ``overture_runtime.config.SERVICES``, without importing the runtime)."""


@dataclass(frozen=True)
class Target:
    """Where and as whom the CLI calls."""

    token: str
    """The bearer token."""
    addresses: dict[str, str]
    """``host:port`` of each service."""

    def channel(self, service: str) -> grpc.aio.Channel:
        """A channel to *service*."""
        import grpc

        return grpc.aio.insecure_channel(self.addresses[service])

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata."""
        return (("authorization", f"Bearer {self.token}"),)


def read_dev_file(path: Path = DEV_FILE) -> dict[str, Any]:
    """What ``overture dev`` saved in *path*; empty when there is none."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        fail(f"cannot read {path} ({error.__class__.__name__}); restart `overture dev` or delete the file")
    return data if isinstance(data, dict) else {}


def target(token: str | None = None) -> Target:
    """The target from flags, environment and the dev file."""
    dev = read_dev_file()
    token = token or os.environ.get("OVERTURE_TOKEN") or dev.get("token")
    if not token:
        fail("no token: pass --token, set OVERTURE_TOKEN, or run `overture dev` in this directory")
    addresses = {
        svc: os.environ.get(f"OVERTURE_{svc.upper()}_ADDRESS") or dev.get("addresses", {}).get(svc) or default
        for svc, default in _DEFAULTS.items()
    }
    return Target(token=token, addresses=addresses)


def new_request_id() -> str:
    """A fresh ``request_id`` (AIP-155) for one mutating call."""
    import uuid

    return str(uuid.uuid4())


def rpc_error(error: grpc.aio.AioRpcError, *, locate: Callable[[str, str], Problem] | None = None) -> CliError:
    """An RPC error as a :class:`CliError`, with its field violations (placed in the spec file by *locate*) and retry delay."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    problems: list[Problem] = []
    retry_after: float | None = None
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            problems += [locate(v.field, v.description) if locate else Problem(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.ToTimedelta().total_seconds()
    return CliError(error.details() or error.code().name.lower(), code=error.code().name, problems=problems, retry_after=retry_after)
