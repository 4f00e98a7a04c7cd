"""Hostile JSON on every HTTP door of ingest (issue 7).

The doors are read from the ingest app's routes (every POST route), and each
is driven in each of its modes: ``/automation/events`` with one event and
with ``{"events": [...]}``, the Segment calls and ``/v1/batch``, and
``/cloudevents`` in structured, batch and binary mode. Bodies carry ``NaN``,
``Infinity``, ``1e999``, integers hundreds of digits long, JSON nested a
thousand and a hundred thousand levels deep, NUL characters and lone
surrogates in strings and keys, huge strings, a wrong type at every field,
invalid UTF-8, gzip bombs and wrong content types. No answer may be a 5xx:
a 4xx carries a JSON body naming the problem, a 2xx with per-event results
names the problem of each rejected event, and the server still serves.

One cluster (the four services in-process on real PostgreSQL and Redis) is
shared by the module. ``OVERTURE_FUZZ_SEED=random`` runs a fresh search.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import gzip
import json
import re
import secrets
import urllib.parse
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import structlog
from hypothesis import given, note
from hypothesis import strategies as st

from overture_ingest.callback_door import callback_routes
from overture_ingest.feedback_door import feedback_routes
from overture_ingest.http import create_http_app
from overture_ingest.link_doors import link_routes
from overture_runtime.auth import TokenTable
from overture_runtime.clock import SystemClock
from overture_runtime.config import Settings
from overture_runtime.links import Links, Unsubscribe
from overture_runtime.sealing import Sealer
from overture_runtime.testing import temporary_database
from tests import fuzzing
from tests.conftest import ADMIN_TOKEN, PG_ADMIN, scratch_namespace, settings_for

from .cluster import Cluster, running_cluster

pytestmark = pytest.mark.asyncio(loop_scope="module")

FUZZ = fuzzing.fuzz_settings(max_examples=25, deadline=dt.timedelta(seconds=60))
SIGNING_KEY = "http-fuzz-signing-key-0123456789"
LINKS = Links(Sealer([SIGNING_KEY]), "")
BEARER = {"authorization": f"Bearer {ADMIN_TOKEN}"}


class Raw:
    """A JSON fragment written as is: what ``json.dumps`` will not write (``NaN``, ``1e999``, a lone
    surrogate escape, a key with NUL). Its repr is short, so that hypothesis can print it."""

    __slots__ = ("label", "text")

    def __init__(self, text: str, label: str = "") -> None:
        self.text, self.label = text, label or text

    def __repr__(self) -> str:
        return f"Raw({self.label[:60]!r})"

    def __hash__(self) -> int:
        return hash(self.text)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Raw) and other.text == self.text


def dump(value: Any) -> str:
    """*value* as JSON text, with each :class:`Raw` written verbatim (keys too)."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{dump(k) if isinstance(k, Raw) else json.dumps(k)}:{dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value)


def _nested(depth: int, kind: str) -> Raw:
    if kind == "list":
        return Raw("[" * depth + "]" * depth, f"a list nested {depth:,} deep")
    return Raw('{"a":' * depth + "1" + "}" * depth, f"an object nested {depth:,} deep")


HOSTILE_VALUES: list[Raw] = [
    Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("1e999"), Raw("-1e999"), Raw("1" * 400, "a 400-digit integer"),
    Raw("-" + "9" * 400, "a negative 400-digit integer"), Raw(str(2**64)), Raw("1e-999"), Raw('"\\u0000"'), Raw('"a\\u0000b"'),
    Raw('"\\ud800"'), Raw('"\\udfff\\ud800"'), Raw('"\\u001b[31m"'), Raw('"' + "x" * 1_000_000 + '"', "a 1,000,000-character string"),
    Raw("null"), Raw("true"), Raw("0"), Raw("-1"), Raw("1.5"), Raw('""'), Raw("[]"), Raw("{}"), Raw('[1, "a"]'), Raw('{"a": 1}'),
    _nested(1000, "list"), _nested(1000, "object"),
]
"""Values put at every field of every door."""
FIELD_SWEEP = [*(v for v in HOSTILE_VALUES if v.label in ("NaN", "Infinity", "1e999", "a 400-digit integer", '"a\\u0000b"', '"\\ud800"',
                                                          "null", "true", "1.5", '""', "[]", "{}", "a list nested 1,000 deep")),
               Raw('"' + "x" * 10_000 + '"', "a 10,000-character string")]
"""The values of the deterministic field sweep (the rest are left to the hypothesis search); 10,000
characters is past what a PostgreSQL index entry holds."""
HOSTILE_KEYS: list[Raw] = [Raw('"\\u0000"'), Raw('"a\\u0000b"'), Raw('"\\ud800"'), Raw('""'), Raw('"' + "k" * 300 + '"', "a 300-character key")]
"""Keys put into every object of every door."""


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _uid() -> str:
    return f"fuzz-{secrets.token_hex(6)}"


class Door:
    """One HTTP door in one mode: where it is, how its requests look, and how it wraps a batch."""

    def __init__(self, name: str, path: str, event: Callable[[], Any], *, content_type: str = "application/json",
                 batch: Callable[[list[Any]], Any] | None = None, binary: bool = False, basic: bool = False,
                 encode: Callable[[Any], bytes] | None = None) -> None:
        self.name, self.path, self.event, self.content_type = name, path, event, content_type
        self.batch, self.binary, self.basic = batch, binary, basic
        self.encode: Callable[[Any], bytes] = encode or (lambda body: dump(body).encode())
        """How a body goes on the wire (JSON, unless the door takes a form or an email)."""

    def __repr__(self) -> str:
        return f"Door({self.name})"

    def body(self) -> Any:
        """A valid body of this door: one event, or a batch of two."""
        return self.batch([self.event(), self.event()]) if self.batch else self.event()

    def headers(self, body: Any) -> dict[str, str]:
        """The headers of a request carrying *body* (binary CloudEvents carry the context in headers)."""
        if self.basic:
            import base64

            headers = {"authorization": "Basic " + base64.b64encode(f"{ADMIN_TOKEN}:".encode()).decode()}
        else:
            headers = dict(BEARER)
        headers["content-type"] = self.content_type
        if self.binary:
            headers.update({"ce-specversion": "1.0", "ce-id": _uid(), "ce-source": "/fuzz", "ce-type": "user.visited", "ce-subject": "dave"})
        return headers


def _automation_event() -> dict[str, Any]:
    return {"event_type": "user.visited", "subject_id": "dave", "event_id": _uid(), "occurred_at": _now(), "source": "fuzz",
            "attributes": {"page": "home", "plan": "pro", "visits": 3}}


def _segment(kind: str) -> Callable[[], dict[str, Any]]:
    def message() -> dict[str, Any]:
        base: dict[str, Any] = {"type": kind, "userId": "dave", "messageId": _uid(), "timestamp": _now()}
        extra: dict[str, dict[str, Any]] = {
            "track": {"event": "Order Completed", "properties": {"revenue": 9.5, "currency": "EUR"}},
            "identify": {"traits": {"plan": "pro", "first_name": "Dave"}},
            "page": {"name": "Home", "properties": {"url": "https://example.com/"}},
            "screen": {"name": "Home", "properties": {"app": "ios"}},
            "group": {"groupId": "g1", "traits": {"name": "Acme"}},
            "alias": {"previousId": "anon-1"},
        }
        return {**base, **extra[kind]}

    return message


def _cloud_event() -> dict[str, Any]:
    return {"specversion": "1.0", "id": _uid(), "source": "/fuzz", "type": "user.visited", "subject": "dave", "time": _now(),
            "datacontenttype": "application/json", "data": {"page": "home", "plan": "pro"}}


DOORS = [
    Door("automation single", "/automation/events", _automation_event),
    Door("automation batch", "/automation/events", _automation_event, batch=lambda items: {"events": items}),
    *(Door(f"segment {kind}", f"/v1/{kind}", _segment(kind), basic=True) for kind in ("track", "identify", "page", "screen", "group", "alias")),
    Door("segment batch", "/v1/batch", _segment("track"), batch=lambda items: {"batch": items}, basic=True),
    Door("cloudevents structured", "/cloudevents", _cloud_event, content_type="application/cloudevents+json"),
    Door("cloudevents batch", "/cloudevents", _cloud_event, content_type="application/cloudevents-batch+json", batch=lambda items: items),
    Door("cloudevents binary", "/cloudevents", lambda: {"page": "home", "plan": "pro"}, binary=True),
    Door("one-click unsubscribe", LINKS.unsubscribe_url(Unsubscribe("acme", "dave", "email", "marketing", "fuzz:send"), now=dt.datetime.now(dt.UTC)),
         lambda: {"List-Unsubscribe": "One-Click"}, content_type="application/x-www-form-urlencoded",
         encode=lambda body: urllib.parse.urlencode(body).encode() if isinstance(body, dict) else dump(body).encode()),
    Door("email feedback", "/email/feedback", lambda: {"Content-Type": "multipart/report; report-type=delivery-status", "Status": "5.1.1"},
         content_type="message/rfc822",
         encode=lambda body: "".join(f"{k}: {v}\r\n" for k, v in body.items()).encode() + b"\r\n" if isinstance(body, dict)
         else dump(body).encode()),
]
"""Every door in every mode. A POST route missing here is still fuzzed as a generic JSON door."""


def _routes() -> list[str]:
    """Every POST path of the ingest HTTP app, read from its routes (no pipeline is needed to list them)."""
    links = link_routes(pipeline=None, links=LINKS, settings=None, clock=SystemClock(), orchestrator=None,  # type: ignore[arg-type]
                        error_response=None)  # type: ignore[arg-type]
    links += feedback_routes(tokens=TokenTable([]), settings=None, connectors=None, error_response=None)  # type: ignore[arg-type]
    links += callback_routes(settings=None, connectors=None, error_response=None)  # type: ignore[arg-type]
    app = create_http_app(pipeline=None, tokens=TokenTable([]), extra_routes=links)  # type: ignore[arg-type]
    return sorted({str(getattr(r, "path", "")) for r in app.routes if "POST" in (getattr(r, "methods", None) or ())})


_SEALED = {"/l/unsubscribe/{token}"}
"""Doors whose path holds a sealed token: in DOORS with a real one."""
ALL_DOORS = [*DOORS, *(Door(f"generic {path}", path, _automation_event) for path in _routes() if path not in {d.path for d in DOORS} | _SEALED)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    """One cluster for the module, on its own database and Redis namespace."""
    async with temporary_database(PG_ADMIN) as url, scratch_namespace("httpfuzz") as namespace:

        def make_settings(**overrides: object) -> Settings:
            return settings_for(url, namespace, **{"signing_keys": SIGNING_KEY, **overrides})

        async with running_cluster(make_settings, Path(tmp_path_factory.mktemp("mail"))) as running:
            yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http(cluster: Cluster) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client to the ingest doors."""
    async with httpx.AsyncClient(base_url=cluster.http, timeout=60) as client:
        yield client


async def _answers(http: httpx.AsyncClient, door: Door, cases: list[tuple[str, bytes, dict[str, str]]]) -> list[str]:
    """The problems of the answers to *cases* (what, body, headers), sent four at a time; a problem
    that does not recur when its request is sent alone is marked so (neighbours can share a group commit)."""
    gate = asyncio.Semaphore(4)

    async def one(what: str, content: bytes, headers: dict[str, str]) -> list[str]:
        async with gate:
            return _problems(door, await _post(http, door, content, headers=headers), what, logs)

    with _server_logs() as logs:
        found = await asyncio.gather(*(one(*case) for case in cases))
        failures = []
        for case, problems in zip(cases, found, strict=True):
            if problems and not await one(*case):
                problems = [f"(only alongside other requests) {p}" for p in problems]
            failures += problems
    return failures


async def _post(http: httpx.AsyncClient, door: Door, content: bytes, *, headers: dict[str, str] | None = None) -> httpx.Response:
    return await http.post(door.path, content=content, headers=headers if headers is not None else door.headers(None))


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\b.*$", re.MULTILINE)


def _server_logs() -> contextlib.AbstractContextManager[Any]:
    """What the in-process server logs meanwhile, tracebacks formatted (one capture at a time)."""
    return structlog.testing.capture_logs(processors=[structlog.processors.format_exc_info])


def _server_error(text: str, logs: list[Any]) -> str:
    """The last line of the exception the server logged for the error id in *text*."""
    ids = set(re.findall(r"reference ([0-9a-f-]+)", text))
    for entry in logs:
        if entry.get("error_id") in ids:
            found = [m.group(0) for m in _EXCEPTION_LINE.finditer(str(entry.get("exception", "")))]
            return found[-1][:200] if found else str(entry)[:200]
    return "(no server log found)"


def _problems(door: Door, response: httpx.Response, what: str, logs: list[Any] | None = None) -> list[str]:
    """What is wrong with *response* to *what*: a 5xx, a body that is not JSON, a 4xx that names no
    problem, a rejected event without its violations."""
    where = f"{door.name} {door.path} with {what}: HTTP {response.status_code}"
    if response.status_code >= 500:
        return [f"{where} {response.text[:200]}\n    server: {_server_error(response.text, logs or [])}"]
    try:
        body = response.json()
    except ValueError:
        return [f"{where} with a body that is not JSON: {response.text[:200]!r}"]
    if response.status_code >= 400:
        error = body.get("error") if isinstance(body, dict) else None
        message = (body.get("message") if isinstance(body, dict) else None) or (error.get("message") if isinstance(error, dict) else None)
        if not (isinstance(message, str) and message.strip()):
            return [f"{where} without a message naming the problem: {response.text[:200]}"]
        return []
    found = []
    for result in body.get("results", []) if isinstance(body, dict) else []:
        if result.get("status") not in ("accepted", "duplicate", "rejected"):
            found.append(f"{where}: a result without a status: {result}")
        elif result["status"] == "rejected" and not all(v.get("field") and v.get("description") for v in result.get("field_violations") or [{}]):
            found.append(f"{where}: a rejected event without a field violation: {result}")
    return found


async def _still_serving(http: httpx.AsyncClient) -> None:
    """The HTTP server answers its health check and takes a valid event."""
    assert (await http.get("/healthz")).status_code == 200
    response = await http.post("/automation/events", json=_automation_event(), headers=BEARER)
    assert response.status_code == 202 and response.json()["status"] == "accepted", response.text


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a JSON value (keys of objects, indices of lists), outermost first."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:1]):
            yield from _paths(item, (*prefix, index))


def _put(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    """A copy of *value* with the value at *path* replaced by *new*."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {k: (_put(v, rest, new) if k == head else v) for k, v in value.items()}
    return [(_put(v, rest, new) if i == head else v) for i, v in enumerate(value)]


def _add_key(value: Any, path: tuple[Any, ...], key: Raw) -> Any:
    """A copy of *value* with the object at *path* holding one more key, *key*."""
    target = value
    for step in path:
        target = target[step]
    return _put(value, path, {**target, key: 1})


def _describe(path: tuple[Any, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or "the body"


@functools.cache
def _bomb(size: int) -> bytes:
    """*size* bytes of zeros, gzipped (about a thousandth of the size)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"0" * (1 << 20)
    return b"".join(compressor.compress(chunk) for _ in range(size >> 20)) + compressor.flush()


def _whole_bodies(door: Door) -> Iterator[tuple[str, bytes, dict[str, str]]]:
    """Hostile whole requests to *door*: (what, body, headers)."""
    headers = door.headers(None)
    valid = dump(door.body()).encode()
    for value in HOSTILE_VALUES:
        yield f"the whole body {value.label}", value.text.encode(), headers
    for depth in (1000, 100_000):
        yield f"a body nested {depth:,} deep", _nested(depth, "list").text.encode(), headers
        yield f"a body of objects nested {depth:,} deep", _nested(depth, "object").text.encode(), headers
    yield "an empty body", b"", headers
    plain = {k: v for k, v in headers.items() if k != "authorization"}
    yield "no credentials", valid, plain
    yield "a bogus token", valid, {**plain, "authorization": "Bearer not-a-token"}
    yield "malformed basic credentials", valid, {**plain, "authorization": "Basic !!!"}
    yield "basic credentials that are not UTF-8", valid, {**plain, "authorization": "Basic /w=="}
    yield "truncated JSON", valid[: len(valid) // 2], headers
    yield "invalid UTF-8", valid.replace(b'"dave"', b'"d\xffve"') if b'"dave"' in valid else b'{"\xff": 1}', headers
    yield "a lone surrogate in UTF-8 (CESU-8)", valid.replace(b'"dave"', b'"d\xed\xa0\x80ve"') if b'"dave"' in valid else b'"\xed\xa0\x80"', headers
    yield "an overlong NUL", valid.replace(b'"dave"', b'"d\xc0\x80ve"') if b'"dave"' in valid else b'"\xc0\x80"', headers
    yield "UTF-16", valid.decode().encode("utf-16"), headers
    yield "a byte-order mark", b"\xef\xbb\xbf" + valid, headers
    yield "a body over 5 MiB", b'{"x": "' + b"x" * (5 * 1024 * 1024 + 10) + b'"}', headers
    yield "gzip", gzip.compress(valid), {**headers, "content-encoding": "gzip"}
    yield "a gzip bomb (64 MiB)", _bomb(64 << 20), {**headers, "content-encoding": "gzip"}
    yield "gzip inside gzip", gzip.compress(gzip.compress(valid)), {**headers, "content-encoding": "gzip"}
    yield "content-encoding gzip on a plain body", valid, {**headers, "content-encoding": "gzip"}
    yield "truncated gzip", gzip.compress(valid)[:-8], {**headers, "content-encoding": "gzip"}
    yield "content-encoding br", valid, {**headers, "content-encoding": "br"}
    if door.binary:
        for header, text in (("ce-subject", "x" * 10_000), ("ce-subject", ""), ("ce-time", "yesterday"), ("ce-time", "10000-01-01T00:00:00Z"),
                             ("ce-id", ""), ("ce-specversion", "0.3"), ("ce-type", "Not A Type"), ("ce-source", "x" * 10_000)):
            yield f"the header {header}: {text[:20]!r}", valid, {**headers, header: text}
    for content_type in ("text/plain", "application/xml", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded",
                         "application/json; charset=latin-1", "application/cloudevents+json", "application/cloudevents-batch+json", ""):
        yield f"content-type {content_type or '(none)'}", valid, {**headers, "content-type": content_type}


@pytest.mark.parametrize("door", ALL_DOORS, ids=repr)
async def test_hostile_bodies_get_a_clear_answer(http: httpx.AsyncClient, door: Door) -> None:
    """Hostile whole bodies (deep nesting, NaN, huge numbers, bad UTF-8, gzip bombs, wrong content types) get a 4xx or
    per-event results naming the problem, never a 5xx, and the server still serves."""
    failures = await _answers(http, door, list(_whole_bodies(door)))
    assert not failures, f"{len(failures)} bad answers:\n" + "\n".join(failures)
    await _still_serving(http)


@pytest.mark.parametrize("door", ALL_DOORS, ids=repr)
async def test_every_field_of_every_door_takes_hostile_values(http: httpx.AsyncClient, door: Door) -> None:
    """Every field of a valid body, set to a hostile value or a wrong type (and every object given a hostile key),
    gets a 4xx or per-event results naming the problem, never a 5xx."""
    body = door.body()
    cases: list[tuple[str, Any]] = []
    for path in list(_paths(body))[1:]:  # the whole body is the other test's
        cases += [(f"{_describe(path)} = {value.label}", _put(body, path, value)) for value in FIELD_SWEEP]
        target: Any = body
        for step in path:
            target = target[step]
        if isinstance(target, dict):
            cases += [(f"{_describe(path)} with the key {key.label}", _add_key(body, path, key)) for key in HOSTILE_KEYS]
    failures = await _answers(http, door, [(what, dump(value).encode(), door.headers(value)) for what, value in cases])
    assert not failures, f"{len(failures)} of {len(cases)} bad answers:\n" + "\n".join(failures)
    await _still_serving(http)


def _json_values() -> st.SearchStrategy[Any]:
    """JSON values with hostile leaves (see :data:`HOSTILE_VALUES`) and hostile keys."""
    leaves = st.one_of(st.sampled_from(HOSTILE_VALUES), st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
                       fuzzing.hostile_strings(max_size=20))
    keys = st.one_of(st.sampled_from(HOSTILE_KEYS), fuzzing.hostile_strings(max_size=12))
    return st.recursive(leaves, lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(keys, children, max_size=3)),
                        max_leaves=10)


@st.composite
def _requests(draw: st.DrawFn, door: Door) -> tuple[str, bytes, dict[str, str]]:
    """A request to *door*: its valid body with one place replaced by a hostile value (and maybe gzipped, maybe
    sent with another content type), or random bytes."""
    body = door.body()
    headers = door.headers(body)
    if draw(st.integers(0, 9)) == 0:
        return "random bytes", draw(st.binary(max_size=300)), headers
    path = draw(st.sampled_from(list(_paths(body))))
    value = draw(_json_values())
    mutated = _put(body, path, value)
    content = dump(mutated).encode()
    what = f"{_describe(path)} = {value!r}"[:300]
    if draw(st.integers(0, 5)) == 0:
        content, headers, what = gzip.compress(content), {**headers, "content-encoding": "gzip"}, f"{what}, gzipped"
    if draw(st.integers(0, 7)) == 0:
        content_type = draw(st.sampled_from(["text/plain", "application/cloudevents+json", "application/cloudevents-batch+json", ""]))
        headers, what = {**headers, "content-type": content_type}, f"{what}, content-type {content_type or '(none)'}"
    return what, content, headers


@pytest.mark.parametrize("door", ALL_DOORS, ids=repr)
@fuzzing.seeded
@FUZZ
@given(data=st.data())
async def test_no_door_answers_5xx(http: httpx.AsyncClient, door: Door, data: st.DataObject) -> None:
    """A valid body with any place replaced by any hostile JSON value gets a 4xx or per-event results naming the problem, never a 5xx."""
    what, content, headers = data.draw(_requests(door), label="request")
    with _server_logs() as logs:
        response = await _post(http, door, content, headers=headers)
    note(f"answer: HTTP {response.status_code} {response.text[:300]}")
    assert not _problems(door, response, what, logs)
    assert (await http.get("/healthz")).status_code == 200


POISONS = {
    "Infinity": Raw("Infinity"), "NaN": Raw("NaN"), "1e999": Raw("1e999"), "a 400-digit integer": Raw("1" * 400),
    "a NUL in a value": Raw('"a\\u0000b"'), "a lone surrogate": Raw('"\\ud800"'),
}
"""Attribute values no event can store."""


def _results(response: httpx.Response, logs: list[Any]) -> list[dict[str, Any]]:
    assert response.status_code < 500, f"HTTP {response.status_code} {response.text[:300]}\nserver: {_server_error(response.text, logs)}"
    body = response.json()
    assert isinstance(body, dict) and "results" in body, f"HTTP {response.status_code}: no per-event results: {response.text[:500]}"
    return list(body["results"])


def _assert_only_the_middle_rejected(results: list[dict[str, Any]]) -> None:
    assert [r["status"] for r in results] == ["accepted", "rejected", "accepted"], results
    assert results[1]["field_violations"] and all(v["field"] and v["description"] for v in results[1]["field_violations"]), results[1]


@pytest.mark.parametrize("poison", POISONS, ids=str)
@pytest.mark.parametrize("key", ["bad", Raw('"a\\u0000b"', "a NUL key")], ids=repr)
async def test_one_bad_event_of_an_automation_batch_is_rejected_alone(http: httpx.AsyncClient, poison: str, key: Any) -> None:
    """POST /automation/events {"events": [good, bad, good]} with an unstorable attribute in the middle event rejects that event alone."""
    events = [_automation_event() for _ in range(3)]
    events[1]["attributes"] = {**events[1]["attributes"], key: POISONS[poison]}
    with _server_logs() as logs:
        response = await http.post("/automation/events", content=dump({"events": events}).encode(),
                                   headers={**BEARER, "content-type": "application/json"})
    _assert_only_the_middle_rejected(_results(response, logs))


@pytest.mark.parametrize("poison", POISONS, ids=str)
@pytest.mark.parametrize("key", ["bad", Raw('"a\\u0000b"', "a NUL key")], ids=repr)
async def test_one_bad_message_of_a_segment_batch_is_rejected_alone(http: httpx.AsyncClient, poison: str, key: Any) -> None:
    """POST /v1/batch with an unstorable property in the middle message rejects that message alone and accepts its neighbours."""
    door = next(d for d in DOORS if d.name == "segment batch")
    messages = [_segment("track")() for _ in range(3)]
    messages[1]["properties"] = {**messages[1]["properties"], key: POISONS[poison]}
    with _server_logs() as logs:
        response = await http.post("/v1/batch", content=dump({"batch": messages}).encode(), headers=door.headers(None))
    _assert_only_the_middle_rejected(_results(response, logs))


@pytest.mark.parametrize("poison", POISONS, ids=str)
async def test_one_bad_event_of_a_cloudevents_batch_is_rejected_alone(http: httpx.AsyncClient, poison: str) -> None:
    """A CloudEvents batch with an unstorable value in the middle event's data rejects that event alone."""
    door = next(d for d in DOORS if d.name == "cloudevents batch")
    events = [_cloud_event() for _ in range(3)]
    events[1]["data"] = {**events[1]["data"], "bad": POISONS[poison]}
    with _server_logs() as logs:
        response = await http.post("/cloudevents", content=dump(events).encode(), headers=door.headers(None))
    _assert_only_the_middle_rejected(_results(response, logs))


async def test_the_fuzz_reaches_every_door(http: httpx.AsyncClient) -> None:
    """Every POST route of the ingest HTTP app is among the fuzzed doors, and every door takes a valid body."""
    assert set(_routes()) - _SEALED <= {d.path for d in ALL_DOORS}
    assert all(any(d.path.startswith(sealed.split("{")[0]) for d in DOORS) for sealed in _SEALED)  # each with a real token
    for door in DOORS:
        body = door.body()
        response = await _post(http, door, door.encode(body), headers=door.headers(body))
        assert 200 <= response.status_code < 300, f"{door.name}: HTTP {response.status_code} {response.text[:300]}"
