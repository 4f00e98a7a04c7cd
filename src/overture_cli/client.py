"""How the CLI reaches Overture: addresses and token.

The token comes from ``--token``, then ``OVERTURE_TOKEN``, then the file
``overture dev`` writes (``.overture/dev.json``); addresses from
``OVERTURE_<SERVICE>_ADDRESS``, then that file, then the default ports.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

__all__ = ["Target", "fail", "rpc_error", "target"]

DEV_FILE = Path(".overture") / "dev.json"
_DEFAULTS = {"ingest": "127.0.0.1:50051", "rules": "127.0.0.1:50052", "orchestrator": "127.0.0.1:50053", "connectors": "127.0.0.1:50054"}


@dataclass(frozen=True)
class Target:
    """Where and as whom the CLI calls."""

    token: str
    addresses: dict[str, str]

    def channel(self, service: str) -> grpc.aio.Channel:
        """A channel to *service*."""
        return grpc.aio.insecure_channel(self.addresses[service])

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata."""
        return (("authorization", f"Bearer {self.token}"),)


def target(token: str | None = None) -> Target:
    """The target from flags, environment and the dev file."""
    dev: dict[str, Any] = {}
    if DEV_FILE.exists():
        dev = json.loads(DEV_FILE.read_text())
    token = token or os.environ.get("OVERTURE_TOKEN") or dev.get("token")
    if not token:
        fail("no token: pass --token, set OVERTURE_TOKEN, or run `overture dev` in this directory")
    addresses = {
        svc: os.environ.get(f"OVERTURE_{svc.upper()}_ADDRESS") or dev.get("addresses", {}).get(svc) or default
        for svc, default in _DEFAULTS.items()
    }
    return Target(token=token, addresses=addresses)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print *message* to stderr and exit."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def rpc_error(error: grpc.aio.AioRpcError) -> NoReturn:
    """Print an RPC error with its field violations, and exit."""
    lines = [f"{error.code().name}: {error.details()}"]
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            lines += [f"  {v.field}: {v.description}" for v in bad.field_violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            lines.append(f"  retry after {retry.retry_delay.ToTimedelta().total_seconds():g}s")
    fail("\n".join(lines))
