"""The four services as separate processes, with the test tokens."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

from overture_runtime.config import SERVICES
from overture_runtime.testing import Processes
from overture_runtime.testing import service_processes as _service_processes
from tests.conftest import REDIS_URL, SERVICE_TOKEN, TOKENS


@contextlib.asynccontextmanager
async def service_processes(
    *, database_url: str, redis_namespace: str, smtp_port: int, log_dir: Path, extra_env: Mapping[str, str] | None = None,
    services: Sequence[str] = SERVICES,
) -> AsyncIterator[Processes]:
    """Run all four services on this test's database and namespace; assert they drain cleanly on SIGTERM."""
    env = dict(
        DATABASE_URL=database_url, REDIS_URL=REDIS_URL, OVERTURE_REDIS_NAMESPACE=redis_namespace,
        OVERTURE_AUTH_TOKENS=json.dumps(TOKENS), OVERTURE_SERVICE_TOKEN=SERVICE_TOKEN,
        OVERTURE_SMTP_HOST="127.0.0.1", OVERTURE_SMTP_PORT=str(smtp_port), OVERTURE_STREAM_PARTITIONS="4",
    )
    env.update(extra_env or {})
    async with _service_processes(env=env, log_dir=log_dir, services=services) as running:
        yield running
    assert all(code == 0 for code in running.exit_codes.values()), f"services did not drain cleanly: {running.exit_codes}"
