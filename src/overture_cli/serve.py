"""``overture serve <service>``: run one service in this process."""

from __future__ import annotations

import asyncio
import importlib

from overture_runtime import Settings, load_settings, serve
from overture_runtime.config import ServiceName
from overture_runtime.logging import configure_logging
from overture_runtime.telemetry import configure_tracing

__all__ = ["app_class", "run"]

_APPS = {
    "ingest": "overture_ingest:IngestApp",
    "rules": "overture_rules:RulesApp",
    "orchestrator": "overture_orchestrator:OrchestratorApp",
    "connectors": "overture_connectors:ConnectorsApp",
}


def app_class(service: ServiceName) -> type:
    """The app class of *service*, imported on demand."""
    module, _, name = _APPS[service].partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def run(service: ServiceName, settings: Settings | None = None) -> None:
    """Run *service* until SIGTERM or SIGINT."""
    settings = settings or load_settings()
    configure_logging(level=settings.log_level, fmt=settings.log_format, service=service)
    configure_tracing(service=service, exporter=settings.otel_exporter)
    app = app_class(service)(settings)
    asyncio.run(serve(app, settings))
