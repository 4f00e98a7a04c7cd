"""The HTTP JSON door of ingest: same validation and pipeline as gRPC,
JSON errors with field violations, and auth by bearer token."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from overture_ingest import IngestApp
from overture_runtime.config import Settings
from overture_runtime.testing import serving
from tests.conftest import ADMIN_TOKEN, READER_TOKEN

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def http(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(ingest_http_port=0, rules_address="127.0.0.1:1", orchestrator_address="127.0.0.1:1")
    app = IngestApp(settings)
    async with serving(app, settings):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.http_port}") as client:
            yield client


async def test_an_event_is_accepted_then_reported_as_duplicate(http: httpx.AsyncClient) -> None:
    """POST /automation/events accepts an event (202) and reports its retry as a duplicate."""
    body = {"event_type": "user.signed_up", "subject_id": "u1", "event_id": "e-1", "occurred_at": "2026-11-01T10:00:00Z",
            "attributes": {"plan": "pro"}}
    first = await http.post("/automation/events", json=body, headers=AUTH)
    again = await http.post("/automation/events", json=body, headers=AUTH)
    assert (first.status_code, first.json()) == (202, {"event_id": "e-1", "status": "accepted"})
    assert again.json()["status"] == "duplicate"


async def test_a_batch_reports_each_event(http: httpx.AsyncClient) -> None:
    """A batch answers one result per event; a bad one does not fail the others (207)."""
    body = {"events": [{"event_type": "a.b", "subject_id": "u1"}, {"subject_id": "u2"}, {"event_type": "a.b", "subject_id": 7}]}
    response = await http.post("/automation/events", json=body, headers=AUTH)
    assert response.status_code == 207
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["accepted", "rejected", "rejected"]
    assert results[1]["field_violations"][0]["field"] == "event_type"
    assert results[2]["field_violations"][0] == {"field": "events[2].subject_id", "description": "subject_id must be a string",
                                                  "reason": "WRONG_TYPE"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"subject_id": "u1"}, "event_type"),
        ({"event_type": "a.b", "subject_id": "u1", "occurred_at": "yesterday"}, "occurred_at"),
        ({"event_type": "a.b", "subject_id": "u1", "colour": "red"}, "colour"),
        ({"event_type": "a.b", "subject_id": "u1", "attributes": [1, 2]}, "attributes"),
    ],
)
async def test_a_bad_event_is_a_400_with_field_violations(http: httpx.AsyncClient, body: dict[str, object], field: str) -> None:
    """A single invalid event is HTTP 400 with a JSON field violation naming the field."""
    response = await http.post("/automation/events", json=body, headers=AUTH)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT" and field in [v["field"] for v in error["field_violations"]]


async def test_malformed_json_is_a_400(http: httpx.AsyncClient) -> None:
    """A body that is not JSON is a 400, not a 500."""
    response = await http.post("/automation/events", content=b"{nope", headers=AUTH)
    assert response.status_code == 400 and response.json()["error"]["reason"] == "MALFORMED_JSON"


async def test_auth_is_required_and_checked(http: httpx.AsyncClient) -> None:
    """No token is 401; a token without events.write is 403."""
    body = {"event_type": "a.b", "subject_id": "u1"}
    assert (await http.post("/automation/events", json=body)).status_code == 401
    denied = await http.post("/automation/events", json=body, headers={"authorization": f"Bearer {READER_TOKEN}"})
    assert denied.status_code == 403 and denied.json()["error"]["reason"] == "MISSING_ROLE"


async def test_an_oversized_body_is_a_413(http: httpx.AsyncClient) -> None:
    """A body over the limit is refused with 413 before it is parsed."""
    response = await http.post("/automation/events", content=b"[" + b"1," * 3_000_000 + b"1]", headers=AUTH)
    assert response.status_code == 413


@pytest.mark.parametrize(("method", "path", "status", "reason"), [
    ("POST", "/nope", 404, "NOT_FOUND"), ("GET", "/automation/events", 405, "METHOD_NOT_ALLOWED"), ("POST", "/v1/track/", 404, "NOT_FOUND"),
])
async def test_what_is_not_a_door_answers_json(http: httpx.AsyncClient, method: str, path: str, status: int, reason: str) -> None:
    """An unknown path, a wrong method or a trailing slash get the JSON error shape with their status, never text or a redirect."""
    response = await http.request(method, path, json={})
    assert response.status_code == status
    assert response.json()["error"]["reason"] == reason
