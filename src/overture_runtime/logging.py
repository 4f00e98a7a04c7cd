"""Structured logging: structlog, JSON on stdout, context from contextvars.

Call :func:`configure_logging` once at start-up. Bind per-request context
(tenant, request, trace and run ids) with ``structlog.contextvars``; every
line logged while it is bound carries it. Personal data must never be
logged in clear text: pass it through :mod:`overture_runtime.privacy`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

__all__ = ["configure_logging", "get_logger"]


def configure_logging(*, level: str = "info", fmt: str = "json", service: str = "") -> None:
    """Route structlog (and stdlib logging) to stdout, as JSON or for a console."""
    if fmt == "auto":
        fmt = "console" if sys.stdout.isatty() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if service:
        shared.insert(0, _add_service(service))
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty()) if fmt == "console" else structlog.processors.JSONRenderer(sort_keys=False)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    # Libraries that log through the standard library go through the same
    # renderer, at WARNING and above, so that one stream stays parseable.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
                                            foreign_pre_chain=shared)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)


def _add_service(service: str) -> Any:
    def processor(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
        event.setdefault("service", service)
        return event

    return processor


def get_logger(name: str | None = None) -> Any:
    """A structlog logger, optionally named."""
    return structlog.get_logger(name) if name else structlog.get_logger()
