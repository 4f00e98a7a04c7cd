"""Descriptor-driven fuzz of every unary RPC of the four services (issue 7).

The RPCs come from the generated ``*_pb2`` modules (every method of every
``overture.*`` service), and each request is built by hypothesis from its
message descriptor (tests/fuzzing.py), so a new RPC or field is fuzzed with
no new test code. Every call carries one of several credentials: a token
with every role, a token with exactly the method's role, a service token,
a token with no roles, another tenant's, a bogus one, a malformed header, or
none. No answer may be INTERNAL, UNKNOWN or DATA_LOSS, and every server must
still answer its health check after every call.

One cluster (the four services in-process on real PostgreSQL and Redis) is
shared by the whole module and seeded once with the tour's rule set and
journey, some events, decisions and an erased subject, so that plausible and
mutated requests reach the domain code. ``OVERTURE_FUZZ_SEED=random`` runs a
fresh search; ``OVERTURE_FUZZ_EXAMPLES=10`` a ten times longer one.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import math
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import structlog
from google.protobuf import struct_pb2, text_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from hypothesis import given, note
from hypothesis import strategies as st

import overture
from overture.common.v1 import auth_pb2, event_pb2, messaging_pb2
from overture.ingest.v1 import ingest_service_pb2 as ingest
from overture.orchestrator.v1 import orchestrator_service_pb2 as orch
from overture.rules.v1 import profile_service_pb2 as profiles
from overture.rules.v1 import rules_service_pb2 as rules
from overture_runtime.config import Settings
from overture_runtime.testing import temporary_database
from tests import fuzzing
from tests.conftest import (
    ADMIN_TOKEN,
    OTHER_TENANT_TOKEN,
    PG_ADMIN,
    READER_TOKEN,
    SERVICE_TOKEN,
    TENANT,
    TOKENS,
    scratch_namespace,
    settings_for,
)
from tests.thinpath import eventually, example_journey, example_rule_set

from .cluster import Cluster, running_cluster

pytestmark = pytest.mark.asyncio(loop_scope="module")

METHODS = [m for m in fuzzing.rpc_methods(overture) if m.unary]
BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
CALL_TIMEOUT = 20.0
"""Seconds a call may take before it counts as a server that stopped answering (a hang, not a speed limit)."""
FUZZ = fuzzing.fuzz_settings(max_examples=25, deadline=dt.timedelta(seconds=CALL_TIMEOUT + 10))
NO_ROLE_TOKEN = "fuzz-no-role-token"
MALFORMED = "Bearer"


def _role_token(role: str) -> str:
    return f"fuzz-role-{re.sub(r'[^a-z0-9]+', '-', role.lower())}"


ROLES = sorted({m.option(auth_pb2.required_role) for m in METHODS} - {""})
CREDENTIALS: dict[str, Sequence[tuple[str, str]]] = {
    "every role": (("authorization", f"Bearer {ADMIN_TOKEN}"),),
    "service token for the tenant": (("authorization", f"Bearer {SERVICE_TOKEN}"), ("x-overture-tenant", TENANT)),
    "reader": (("authorization", f"Bearer {READER_TOKEN}"),),
    "other tenant": (("authorization", f"Bearer {OTHER_TENANT_TOKEN}"),),
    "service token without a tenant": (("authorization", f"Bearer {SERVICE_TOKEN}"),),
    "service token for an unknown tenant": (("authorization", f"Bearer {SERVICE_TOKEN}"), ("x-overture-tenant", "no-such-tenant")),
    "token for the wrong tenant": (("authorization", f"Bearer {ADMIN_TOKEN}"), ("x-overture-tenant", "globex")),
    "no roles": (("authorization", f"Bearer {NO_ROLE_TOKEN}"),),
    "bogus": (("authorization", "Bearer not-a-token"),),
    "malformed": (("authorization", MALFORMED),),
    "basic scheme": (("authorization", "Basic dGVzdC1hZG1pbi10b2tlbjo="),),
    "none": (),
}
"""Call metadata per kind of credentials; "the method's role" is added per method."""
UNAUTHENTICATED = ("bogus", "malformed", "basic scheme", "none")
"""Credentials that must be UNAUTHENTICATED whatever the request."""
CREDENTIAL_CHOICES = [*["every role", "the method's role", "service token for the tenant"] * 6,
                      *[k for k in CREDENTIALS if k not in ("every role", "service token for the tenant")]]
"""What the fuzz draws from: mostly (about 60%) credentials that reach the servicer; the credentials
test covers every kind for every RPC."""


def _metadata(method: fuzzing.Method, credentials: str) -> Sequence[tuple[str, str]]:
    if credentials == "the method's role":
        return (("authorization", f"Bearer {_role_token(method.option(auth_pb2.required_role))}"),)
    return CREDENTIALS[credentials]


def _raw(value: bytes) -> bytes:
    return value


class World:
    """The running cluster, raw channels to each server, and what the fuzz knows.

    Not a dataclass: hypothesis prints a test's arguments with any failure, and
    prints a dataclass field by field (all the seeds); this one prints its addresses."""

    def __init__(self, cluster: Cluster, channels: dict[str, grpc.aio.Channel], seeds: fuzzing.Seeds) -> None:
        self.cluster, self.channels, self.seeds = cluster, channels, seeds
        self.strategies: dict[str, st.SearchStrategy[Any]] = {}

    def __repr__(self) -> str:
        return f"World({self.cluster.addresses})"

    def channel(self, method: fuzzing.Method) -> grpc.aio.Channel:
        """The channel to the server of *method* (by its package: ``overture.rules.v1`` is rules)."""
        return self.channels[method.package]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    """One seeded cluster for the module (its own database and Redis namespace)."""
    tokens = [*TOKENS, {"token": NO_ROLE_TOKEN, "tenant": TENANT, "roles": [], "principal": "fuzz-no-roles"},
              *({"token": _role_token(role), "tenant": TENANT, "roles": [role], "principal": f"fuzz-{role}"} for role in ROLES)]
    async with temporary_database(PG_ADMIN) as url, scratch_namespace("fuzz") as namespace:

        def make_settings(**overrides: object) -> Settings:
            return settings_for(url, namespace, **{"auth_tokens": json.dumps(tokens), **overrides})

        async with running_cluster(make_settings, Path(tmp_path_factory.mktemp("mail"))) as cluster:
            async with contextlib.AsyncExitStack() as stack:
                channels = {name: await stack.enter_async_context(grpc.aio.insecure_channel(address))
                            for name, address in cluster.addresses.items()}
                seeds = fuzzing.Seeds()
                running = World(cluster, channels, seeds)
                await _seed(running)
                yield running


def _event(event_type: str, subject: str, event_id: str = "", **attributes: Any) -> event_pb2.Event:
    event = event_pb2.Event(event_type=event_type, subject_id=subject, event_id=event_id)
    event.attributes.update(attributes)
    return event


async def _seed(world: World) -> None:
    """Give the fuzz something to find: the tour's rule set and journey, profiles with consent,
    sign-ups that run the journey, decisions, an erased subject; then every RPC's answer to an
    empty request, harvested for names and ids."""
    c, md, seeds = world.cluster, CREDENTIALS["every role"], world.seeds
    name, spec = example_rule_set()
    seeds.add_message(spec)
    created = await c.rules.CreateRuleSetVersion(rules.CreateRuleSetVersionRequest(rule_set=name, spec=spec, reason="fuzz seed"), metadata=md)
    await c.rules.ActivateRuleSetVersion(rules.ActivateRuleSetVersionRequest(
        rule_set=name, version=created.rule_set_version.version, reason="fuzz seed"), metadata=md)
    journey_name, journey = example_journey()
    seeds.add_message(journey)
    await c.orchestrator.PublishJourney(orch.PublishJourneyRequest(name=journey_name, spec=journey, reason="fuzz seed"), metadata=md)
    subjects = ("alice", "bob", "carol", "dave")
    events = [e for s in subjects for e in (
        _event("identify", s, traits={"email": f"{s}@example.com", "first_name": s.title(), "plan": "pro"}),
        _event("consent.granted", s, channel="email", purpose="marketing"))]
    events += [_event("user.signed_up", s, f"signup-{s}", plan="pro") for s in subjects]
    for event in events:
        seeds.add_message(event)
    seeds.harvest(await c.ingest.IngestEvents(ingest.IngestEventsRequest(events=events), metadata=md))

    async def runs_done() -> bool:
        found = (await c.orchestrator.ListRuns(orch.ListRunsRequest(), metadata=md)).runs
        return len(found) >= len(subjects) and all(r.steps for r in found)

    with contextlib.suppress(AssertionError):  # the fuzz runs on whatever state there is
        await eventually(runs_done, within=15, what="the seed runs")
    evaluate = rules.EvaluateRequest(rule_set=name, subject_id="dave", channel=messaging_pb2.CHANNEL_EMAIL, tags=["newsletter"])
    evaluate.context.update({"plan": "pro"})
    seeds.add_message(evaluate)
    seeds.harvest(await c.rules.Evaluate(evaluate, metadata=md))
    await c.profiles.EraseProfile(profiles.EraseProfileRequest(subject_id="carol", reason="fuzz seed"), metadata=md)
    with contextlib.suppress(ImportError):  # what other services may record in the audit log
        from overture.rules.v1 import audit_event_pb2, audit_service_pb2

        record = audit_service_pb2.AuditRecord(record_id="fuzz-seed", action=audit_event_pb2.AUDIT_ACTION_JOURNEY_PAUSED, actor="fuzz",
                                               reason="fuzz", target=f"journey/{journey_name}")
        record.time.GetCurrentTime()
        record.details.update({"version": 1})
        seeds.add_message(record)
    for key, values in {
        "subject_id": subjects, "rule_set": (name,), "journey": (journey_name,), "name": (journey_name, name), "reason": ("fuzz",),
        "event_type": ("user.signed_up", "identify", "consent.granted"), "purpose": ("marketing",), "timezone": ("UTC", "Europe/Berlin"),
        "to": ("alice@example.com",), "address": ("alice@example.com",), "template": ("welcome",), "tags": ("newsletter",),
        "cron": ("0 9 * * *",), "expression": ('plan == "pro"',), "url": ("https://example.com/hook",), "source": ("fuzz",),
        "start": ("22:00",), "end": ("07:00",), "connector": ("smtp",), "approver_role": ("approvals.decide",),
    }.items():
        seeds.add(key, *values)
    for method in METHODS:
        with contextlib.suppress(grpc.aio.AioRpcError):
            reply = await world.channel(method).unary_unary(method.path, request_serializer=_raw, response_deserializer=method.response_class.FromString)(
                b"", metadata=md, timeout=CALL_TIMEOUT)
            seeds.harvest(reply)


class Call:
    """One fuzz call: its credentials, how its request was made, and the request.

    Not a dataclass: hypothesis pretty-prints dataclasses field by field,
    and a field may hold a megabyte of bytes or a Struct nested too deep to print."""

    __slots__ = ("credentials", "kind", "message", "request")

    def __init__(self, credentials: str, kind: str, request: bytes, message: Message | None) -> None:
        self.credentials, self.kind, self.request, self.message = credentials, kind, request, message

    def __repr__(self) -> str:
        try:
            shown = text_format.MessageToString(self.message, as_one_line=True)[:3000] if self.message is not None else ""
        except RecursionError:  # a Struct nested deeper than Python's recursion limit
            shown = "(nested too deep to print)"
        return f"Call(credentials={self.credentials!r}, kind={self.kind!r}, message=<{shown}>, bytes={self.request[:200]!r}...({len(self.request)} bytes))"


def _calls(method: fuzzing.Method, seeds: fuzzing.Seeds) -> st.SearchStrategy[Call]:
    """Requests to *method*: mostly mutated (valid but for one field), plausible, wholly hostile, or damaged on the wire."""
    descriptor = method.descriptor.input_type
    mutated = fuzzing.mutated_messages(descriptor, seeds=seeds).map(lambda pair: (f"mutated {pair[0] or '(nothing)'}", pair[1]))
    plausible = fuzzing.plausible_messages(descriptor, seeds=seeds).map(lambda m: ("plausible", m))
    hostile = fuzzing.hostile_messages(descriptor, seeds=seeds).map(lambda m: ("hostile", m))
    made = st.one_of(mutated, mutated, plausible, hostile)
    wired = fuzzing.wire_requests(descriptor, st.one_of(plausible, hostile).map(lambda pair: pair[1])).map(
        lambda pair: (f"wire: {pair[0]}", pair[1]))

    def as_call(credentials: str, pair: tuple[str, Message | bytes]) -> Call:
        kind, value = pair
        if isinstance(value, bytes):
            return Call(credentials, kind, value, None)
        request = fuzzing.serialize(value)
        if request is None:  # past every server's 4 MiB limit, and too big to build
            return Call(credentials, f"{kind} (over {fuzzing.MAX_REQUEST_BYTES:,} bytes: replaced by an empty request)", b"", None)
        return Call(credentials, kind, request, value)

    return st.builds(as_call, st.sampled_from(CREDENTIAL_CHOICES), st.one_of(made, made, made, wired))


async def _call(world: World, method: fuzzing.Method, request: bytes, metadata: Sequence[tuple[str, str]], *, logs: list[dict[str, Any]] | None = None
                ) -> tuple[grpc.StatusCode, str, bytes | None, list[dict[str, Any]], Any]:
    """Call *method* with raw *request* bytes: the code, the details, the reply, what the servers
    logged (into *logs* if given, else captured here), and the rich status."""
    stub = world.channel(method).unary_unary(method.path, request_serializer=_raw, response_deserializer=_raw)
    with contextlib.ExitStack() as stack:
        captured = logs if logs is not None else stack.enter_context(_server_logs())
        try:
            reply = await stub(request, metadata=metadata, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            try:
                status = rpc_status.from_call(error)
            except ValueError as mismatch:  # the rich status says one code, the call ended with another
                status = mismatch
            return error.code(), error.details() or "", None, captured, status
    return grpc.StatusCode.OK, "", reply, captured, None


def _server_logs() -> contextlib.AbstractContextManager[Any]:
    """What the in-process servers log meanwhile, tracebacks formatted (one capture at a time: not reentrant)."""
    return structlog.testing.capture_logs(processors=[structlog.processors.format_exc_info])


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Warning)\b.*$", re.MULTILINE)


def _server_error(details: str, logs: list[dict[str, Any]]) -> str:
    """The exception a server logged for the error id in *details* (its last line), for the failure message."""
    ids = re.findall(r"reference (\S+)", details)
    for entry in logs:
        if entry.get("error_id") in ids or (not ids and "unexpected" in str(entry.get("event"))):
            text = str(entry.get("exception", entry))
            lines = _EXCEPTION_LINE.findall(text) and [m.group(0) for m in _EXCEPTION_LINE.finditer(text)]
            return (lines[-1] if lines else text.strip().splitlines()[-1])[:300]
    return "(no server log found)"


async def _all_serving(world: World) -> dict[str, str]:
    """Each server's health status."""

    async def check(name: str, channel: grpc.aio.Channel) -> tuple[str, str]:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            return name, error.code().name
        return name, health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    return dict(await asyncio.gather(*(check(n, c) for n, c in world.channels.items())))


def _unreadable(details: str, status: Any) -> str | None:
    """Why the client could not read an error answer, if it could not: the rich status names another
    code than the call, or the trailers outgrew the client's metadata limit (8 KiB soft, 16 KiB hard)."""
    if isinstance(status, ValueError):
        return str(status)
    if "metadata size exceeds" in details:
        return "the error's trailers exceed the client's metadata limit"
    return None


def _error_info(status: Any) -> error_details_pb2.ErrorInfo | None:
    for detail in status.details if status and not isinstance(status, ValueError) else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


async def test_the_fuzz_reaches_every_service_the_servers_serve(world: World) -> None:
    """Every overture service that any server serves (asked by reflection) is among the fuzzed RPCs, and each fuzzed package has a server."""
    fuzzed = {m.service.full_name for m in METHODS}
    served: set[str] = set()
    for channel in world.channels.values():
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        async for reply in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=CALL_TIMEOUT):
            served |= {s.name for s in reply.list_services_response.service if s.name.startswith("overture.")}
    assert served and served <= fuzzed, served - fuzzed
    assert {m.package for m in METHODS} <= set(world.channels), {m.package for m in METHODS} - set(world.channels)


@pytest.mark.parametrize("method", METHODS, ids=str)
async def test_every_rpc_checks_credentials_before_reading_the_request(world: World, method: fuzzing.Method) -> None:
    """Without valid credentials any request, even undecodable bytes, is UNAUTHENTICATED; with no role it is PERMISSION_DENIED; never INTERNAL."""
    for request in (b"", b"\x0a\xff\xff\xff\x0f"):
        for credentials in [*CREDENTIALS, "the method's role"]:
            code, details, _, logs, _ = await _call(world, method, request, _metadata(method, credentials))
            where = f"{method} with {credentials} credentials and request {request!r}: {code.name} {details}"
            assert code not in BAD_CODES, f"{where}\nserver: {_server_error(details, logs)}"
            if credentials in UNAUTHENTICATED:
                assert code == grpc.StatusCode.UNAUTHENTICATED, where
            elif credentials == "no roles":
                assert code == grpc.StatusCode.PERMISSION_DENIED, where
    assert set((await _all_serving(world)).values()) == {"SERVING"}


_ID_FIELDS = ("request_id", "idempotency_key")


def _fresh_ids(message: Message, *, keep: str) -> None:
    """Give every request id and idempotency key in *message* a new value (except at *keep*), so that
    no case of a sweep is answered as a repeat of another."""
    for fd, value in message.ListFields():
        if fd.name in _ID_FIELDS and fd.type == fd.TYPE_STRING and not fd.is_repeated and not keep.startswith(fd.name):
            setattr(message, fd.name, str(uuid.uuid4()))
        elif fd.message_type is not None and not fd.message_type.GetOptions().map_entry and not fd.message_type.full_name.startswith("google."):
            for item in value if fd.is_repeated else [value]:
                _fresh_ids(item, keep=keep.split(".", 1)[-1] if "." in keep else "")


@pytest.mark.parametrize("method", METHODS, ids=str)
async def test_every_field_of_every_rpc_takes_edge_values(world: World, method: fuzzing.Method) -> None:
    """A plausible request with any one field (at any depth) set to an edge value of its type is never answered INTERNAL, UNKNOWN or DATA_LOSS."""
    seeds = world.seeds.snapshot()
    base = fuzzing.canonical_message(method.descriptor.input_type, seeds=seeds)
    cases = [("(the plausible request itself)", base), *fuzzing.sweep(base, seeds=seeds)]
    gate = asyncio.Semaphore(4)

    async def attempt(label: str, request: Message, logs: list[dict[str, Any]]) -> str | None:
        _fresh_ids(request, keep=label)
        async with gate:
            code, details, _, _, status = await _call(world, method, request.SerializeToString(), CREDENTIALS["every role"], logs=logs)
        if code in BAD_CODES or code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"{label}: {code.name} {details}\n    server: {_server_error(details, logs)}"
        if (why := _unreadable(details, status)) is not None:
            return f"{label}: {code.name}, an answer the client cannot read ({why}): {details[:200]}"
        return None

    with _server_logs() as logs:
        answers = await asyncio.gather(*(attempt(label, request, logs) for label, request in cases))
    failures = [f for f in answers if f]
    if failures:  # concurrent calls share group commits: say which bad answers a request gets on its own
        alone = dict(zip([label for label, _ in cases], answers, strict=True))
        with _server_logs() as logs:
            for label, request in cases:
                first = alone[label]
                if first is not None and await attempt(label, request, logs) is None:
                    failures[failures.index(first)] = f"(only alongside other requests) {first}"
    assert not failures, f"{method}: {len(failures)} of {len(cases)} edge values answered badly\n" + "\n".join(failures)
    assert set((await _all_serving(world)).values()) == {"SERVING"}


@pytest.mark.parametrize("method", METHODS, ids=str)
@fuzzing.seeded
@FUZZ
@given(data=st.data())
async def test_no_rpc_answers_internal(world: World, method: fuzzing.Method, data: st.DataObject) -> None:
    """Any request to any RPC with any credentials is answered without INTERNAL, UNKNOWN or DATA_LOSS, and every server still serves."""
    if method.path not in world.strategies:
        # Built once per test, from the seeds as they are now: the examples of one test (and their shrinking) must not shift.
        world.strategies[method.path] = _calls(method, world.seeds.snapshot())
    call: Call = data.draw(world.strategies[method.path], label="call")
    code, details, reply, logs, status = await _call(world, method, call.request, _metadata(method, call.credentials))
    note(f"answer: {code.name} {details[:500]}")
    assert code not in BAD_CODES, f"{method} answered {code.name}: {details}\nserver: {_server_error(details, logs)}"
    assert code != grpc.StatusCode.DEADLINE_EXCEEDED, f"{method} did not answer within {CALL_TIMEOUT} s"
    assert "Traceback" not in details
    assert _unreadable(details, status) is None, f"{method}: the answer cannot be read ({_unreadable(details, status)}): {details[:300]}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        info = _error_info(status)
        assert info is not None and re.fullmatch(r"[A-Z][A-Z0-9_]*", info.reason), f"INVALID_ARGUMENT without an ErrorInfo reason: {details}"
    if reply is not None:
        world.seeds.harvest(method.response_class.FromString(reply))
    health = await _all_serving(world)
    assert set(health.values()) == {"SERVING"}, health


def _poison(item: Message, kind: str) -> Message:
    """*item* with one unstorable value: in its first Struct (at any depth), else its first string field."""
    bad = type(item)()
    bad.CopyFrom(item)
    target = _first_struct(bad)
    if target is not None:
        value = {"infinity": math.inf, "nan": math.nan, "negative infinity": -math.inf}.get(kind)
        if value is not None:
            target.fields["bad"].number_value = value
        elif kind == "NUL in a value":
            target.fields["bad"].string_value = "a\x00b"
        else:
            target.fields["a\x00b"].string_value = "x"
        return bad
    for fd in bad.DESCRIPTOR.fields:
        if fd.type == fd.TYPE_STRING and not fd.is_repeated:
            setattr(bad, fd.name, getattr(bad, fd.name) + "\x00")
            return bad
    raise AssertionError(f"nothing to poison in {bad.DESCRIPTOR.full_name}")


def _first_struct(message: Message) -> struct_pb2.Struct | None:
    for fd in message.DESCRIPTOR.fields:
        if fd.message_type is None or fd.is_repeated:
            continue
        if fd.message_type.full_name == "google.protobuf.Struct":
            return getattr(message, fd.name)  # type: ignore[no-any-return]
        found = _first_struct(getattr(message, fd.name)) if not fd.message_type.full_name.startswith("google.") else None
        if found is not None:
            return found
    return None


def _batch_methods() -> list[fuzzing.Method]:
    """RPCs that take a batch and answer per item: the request has one repeated message field and the
    response a repeated ``results`` whose items carry ``violations``."""
    found = []
    for method in METHODS:
        items = [fd for fd in method.descriptor.input_type.fields if fd.is_repeated and fd.message_type is not None]
        results = method.descriptor.output_type.fields_by_name.get("results")
        if len(items) == 1 and results is not None and results.message_type is not None and "violations" in results.message_type.fields_by_name:
            found.append(method)
    return found


def _good_items(item: Descriptor, seeds: fuzzing.Seeds) -> list[Message]:
    """Two valid, distinct batch items of type *item*: hand-made for events and evaluations, else the
    canonical message of the type with fresh ids (so a new batch RPC is covered without new code)."""
    token = secrets.token_hex(4)
    if item.full_name == event_pb2.Event.DESCRIPTOR.full_name:
        return [_event("user.visited", "dave", f"batch-{token}-{i}", page="home") for i in range(2)]
    if item.full_name == rules.EvaluateRequest.DESCRIPTOR.full_name:
        evaluations: list[Message] = []
        for _ in range(2):
            request = rules.EvaluateRequest(rule_set="marketing-email", subject_id="dave", channel=messaging_pb2.CHANNEL_EMAIL)
            request.context.update({"plan": "pro"})
            evaluations.append(request)
        return evaluations
    found = []
    for i in range(2):
        message = fuzzing.canonical_message(item, seeds=seeds)
        _fresh_ids(message, keep="")
        for fd in item.fields:
            if fd.type == fd.TYPE_STRING and not fd.is_repeated and (fd.name.endswith("_id") or fd.name.endswith("_key")) \
                    and fd.name != "subject_id":
                setattr(message, fd.name, f"batch-{token}-{i}")
        found.append(message)
    return found


@pytest.mark.parametrize("poison", ["infinity", "nan", "negative infinity", "NUL in a value", "NUL in a key"])
@pytest.mark.parametrize("method", _batch_methods(), ids=str)
async def test_one_bad_item_of_a_batch_is_rejected_alone(world: World, method: fuzzing.Method, poison: str) -> None:
    """A batch whose middle item holds an unstorable value (Infinity, NaN, NUL) answers OK, rejects that item with a violation, and keeps its neighbours."""
    field_name = next(fd for fd in method.descriptor.input_type.fields if fd.is_repeated and fd.message_type is not None)
    assert field_name.message_type is not None
    good = _good_items(field_name.message_type, world.seeds.snapshot())
    request = method.request_class()
    getattr(request, field_name.name).extend([good[0], _poison(good[1], poison), good[1]])
    code, details, reply, logs, _ = await _call(world, method, request.SerializeToString(), CREDENTIALS["every role"])
    assert code == grpc.StatusCode.OK, f"{method} answered {code.name}: {details}\nserver: {_server_error(details, logs)}"
    assert reply is not None
    results = list(method.response_class.FromString(reply).results)  # type: ignore[attr-defined]
    assert len(results) == 3
    assert not results[0].violations and not results[2].violations, f"the good items of the batch were refused: {results}"
    assert results[1].violations and all(v.field and v.description for v in results[1].violations), results[1]
    status = results[0].DESCRIPTOR.fields_by_name.get("status")
    if status is not None and status.enum_type is not None:  # per-item statuses: the bad one REJECTED, its neighbours not
        names = [status.enum_type.values_by_number[r.status].name for r in results]
        assert [n.endswith("_REJECTED") for n in names] == [False, True, False], names
