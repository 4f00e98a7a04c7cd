"""Rendering pages: the Jinja2 environment (autoescaped), its filters, and
the page response with its notices.

Personal data is masked here, at the last step: the ``pii`` filter (and
:func:`masked` for structures) shows a value in clear only to a person
holding ``profiles.read``; services already mask what they store.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from google.protobuf import descriptor_pool, duration_pb2, json_format, timestamp_pb2
from google.protobuf.message import Message
from jinja2 import Environment, PackageLoader, StrictUndefined, pass_context, select_autoescape
from jinja2.runtime import Context
from starlette.requests import Request
from starlette.responses import HTMLResponse

from overture_runtime.privacy import looks_personal, mask, mask_mapping, mask_text

from .services import role_of
from .sessions import Session

__all__ = ["can", "enum_name", "fmt_duration", "masked", "page"]

PROFILES_READ = "profiles.read"


def enum_name(value: str) -> str:
    """``RUN_STATE_FAILED`` as ``failed`` (the prefix is the enum's name, which every value repeats)."""
    for prefix in ("RUN_STATE_", "STEP_RUN_STATE_", "JOURNEY_STATE_", "VERDICT_KIND_", "VERDICT_OUTCOME_", "CHANNEL_", "AUDIT_ACTION_",
                   "EVALUATION_MODE_", "RESERVATION_STATE_", "MESSAGE_CATEGORY_", "RULE_EFFECT_", "RULE_SET_CHANGE_KIND_",
                   "ATTRIBUTE_TYPE_", "ATTRIBUTE_SOURCE_", "BACKTEST_STATE_", "DELIVERY_STATUS_"):
        if value.startswith(prefix):
            return value[len(prefix):].lower()
    return value.lower()


def label(value: int, enum: str) -> str:
    """An enum number as its short name: ``label(4, "orchestrator.RunState")`` is ``failed``."""
    package, _, name = enum.partition(".")
    found = descriptor_pool.Default().FindEnumTypeByName(f"overture.{package}.v1.{name}").values_by_number.get(int(value))
    return enum_name(found.name) if found is not None else str(value)


def fmt_time(value: Any) -> str:
    """A Timestamp or datetime as ``2026-01-02 10:00:00 UTC``; empty when unset."""
    if isinstance(value, timestamp_pb2.Timestamp):
        if not value.seconds and not value.nanos:
            return ""
        value = value.ToDatetime(tzinfo=dt.UTC)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return ""


def fmt_duration(value: Any) -> str:
    """A Duration or seconds as ``1.2 s``, ``350 ms``, ``3 h 5 m``."""
    seconds = value.ToTimedelta().total_seconds() if isinstance(value, duration_pb2.Duration) else float(value or 0)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    return " ".join(f"{n} {u}" for n, u in parts if n)[:16]


def _session(context: Context) -> Session | None:
    session = context.get("session")
    return session if isinstance(session, Session) else None


def can(session: Session | None, rpc: str) -> bool:
    """Whether the person may call *rpc* (``orchestrator.PauseJourney``): the role it declares in the proto."""
    return session is not None and session.can(role_of(rpc))


def masked(session: Session | None, value: Any) -> Any:
    """*value* (a message, dict, list or text) with personal data masked unless the person holds ``profiles.read``."""
    if isinstance(value, Message):
        value = json_format.MessageToDict(value, preserving_proto_field_name=True)
    if session is not None and session.can(PROFILES_READ):
        return value
    if isinstance(value, dict):
        return mask_mapping(value)
    if isinstance(value, list):
        return mask_mapping({"v": value})["v"]
    if isinstance(value, str):
        return mask(value) if looks_personal(value) else mask_text(value)
    return value


@pass_context
def _pii(context: Context, value: Any) -> Any:
    return masked(_session(context), value)


@pass_context
def _can(context: Context, rpc: str) -> bool:
    return can(_session(context), rpc)


def _json(value: Any) -> str:
    if isinstance(value, Message):
        value = json_format.MessageToDict(value, preserving_proto_field_name=True)
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("overture_console", "templates"), autoescape=select_autoescape(default=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(time=fmt_time, duration=fmt_duration, enum=enum_name, label=label, pii=_pii, tojson_pretty=_json, role=role_of)
    env.globals.update(can=_can)
    return env


ENV = _environment()


def page(request: Request, template: str, *, status: int = 200, **values: Any) -> HTMLResponse:
    """Render *template* for *request*'s session, with the notices left for it."""
    session: Session | None = request.scope.get("console.session")
    notices = list(values.pop("notices", []))
    if session is not None and session.notices and status < 400:
        notices = [*session.notices, *notices]
        session.notices.clear()
        request.scope["console.session_dirty"] = True
    body = ENV.get_template(template).render(request=request, session=session, notices=notices, path=request.url.path, **values)
    return HTMLResponse(body, status_code=status)
