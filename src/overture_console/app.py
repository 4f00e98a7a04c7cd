"""The console as an ASGI app, and ``overture serve console``.

:func:`create_app` builds the Starlette app over a :class:`~.web.Console`
(channels, sessions, token table, template library); :func:`serve` runs it
under uvicorn until SIGTERM or SIGINT, then lets requests in flight finish.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import structlog
import uvicorn
from pydantic import AliasChoices, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from overture_runtime.auth import TokenTable
from overture_runtime.clock import SystemClock, new_id
from overture_runtime.config import Settings
from overture_runtime.redis import Keys, create_redis
from overture_runtime.sealing import Sealer

from . import analytics_views, audit_views, auth_views, builder_views, journey_views, operations_views, rules_views, runs_views
from .library import JourneyLibrary
from .render import page
from .services import Services
from .sessions import SessionStore
from .web import Console, SecurityHeaders

__all__ = ["ROUTES", "ConsoleSettings", "create_app", "serve"]

log = structlog.get_logger("overture.console")
STATIC = Path(__file__).parent / "static"


class ConsoleSettings(Settings):
    """The shared settings, less what the console does not use: it has no database of its own."""

    database_url: str = Field(default="", validation_alias=AliasChoices("OVERTURE_DATABASE_URL", "DATABASE_URL"))


async def _home(request: Request) -> Response:
    return RedirectResponse("/journeys", status_code=303)


async def _healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def _not_found(request: Request, exc: Exception) -> Response:
    return page(request, "error.html", status=404, title="Not found", message="There is no such page.")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    return page(request, "error.html", status=405, title="Not allowed", message="This page does not take that method.")


async def _failed(request: Request, exc: Exception) -> Response:
    error_id = new_id()
    log.exception("console.unexpected_error", error_id=error_id, path=request.url.path)
    return page(request, "error.html", status=500, title="Something went wrong", message=f"The console failed; reference {error_id}.")


ROUTES: list[BaseRoute] = [
    Route("/", _home),
    Route("/healthz", _healthz),
    *auth_views.routes,
    *journey_views.routes,
    *builder_views.routes,
    *runs_views.routes,
    *operations_views.routes,
    *rules_views.routes,
    *audit_views.routes,
    *analytics_views.routes,
    Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
]
"""Every route of the console."""


def create_app(settings: Settings, *, console: Console | None = None) -> Starlette:
    """The console app on *settings* (or an already built *console*)."""
    if console is None:
        redis = create_redis(settings.redis_url, cluster=settings.redis_cluster)
        sessions = SessionStore(redis=redis, keys=Keys(settings.redis_namespace),
                                sealer=Sealer([k.get_secret_value() for k in settings.signing_keys]), clock=SystemClock(),
                                idle_seconds=settings.console_session_idle_seconds)
        console = Console(settings=settings, services=Services(settings), sessions=sessions,
                          tokens=TokenTable(settings.auth_tokens, extra_tenants=settings.tenants),
                          library=JourneyLibrary(Path(settings.console_journey_templates)))
    app = Starlette(routes=ROUTES, exception_handlers={404: _not_found, 405: _method_not_allowed, 500: _failed})
    app.state.console = console
    app.add_middleware(SecurityHeaders)
    return app


class _Uvicorn(uvicorn.Server):
    """Uvicorn under our own signal handling."""

    def install_signal_handlers(self) -> None:
        pass


async def serve(settings: Settings, *, port: int | None = None) -> None:
    """Serve the console on ``OVERTURE_CONSOLE_PORT`` (or *port*) until SIGTERM or SIGINT."""
    app = create_app(settings)
    console: Console = app.state.console
    config = uvicorn.Config(app, host=settings.host, port=settings.console_port if port is None else port, log_config=None,
                            access_log=False, lifespan="off", limit_concurrency=1000, timeout_graceful_shutdown=int(settings.shutdown_grace_seconds))
    server = _Uvicorn(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    log.info("console.started", host=settings.host, port=config.port)
    try:
        await server.serve()
    finally:
        await console.services.close()
        log.info("console.stopped")
