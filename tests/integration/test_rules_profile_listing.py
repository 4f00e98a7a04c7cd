"""ListProfiles: every profile or a segment's, by subject id, a page at a
time, erased ones left out; segment membership follows every write that
changes segments, and migration 0006 copies the memberships that existed."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from overture.common.v1 import event_pb2
from overture.rules.v1 import profile_service_pb2 as P
from overture_rules.tables import profiles
from overture_runtime.config import Settings
from overture_runtime.db import Database, migrate

from .rules_support import MD, Rules, field_violations, running_rules

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = ROOT / "services/rules/overture_rules/migrations"


@pytest.fixture
async def svc(make_settings: Callable[..., Settings]) -> AsyncIterator[Rules]:
    async with running_rules(make_settings) as running:
        yield running


async def _all(svc: Rules, segment: str = "", page_size: int = 2) -> list[str]:
    """Every subject listed, page after page."""
    subjects: list[str] = []
    token = ""
    while True:
        page = await svc.profiles.ListProfiles(P.ListProfilesRequest(segment=segment, page_size=page_size, page_token=token), metadata=MD)
        assert len(page.profiles) <= page_size
        subjects += [p.subject_id for p in page.profiles]
        token = page.next_page_token
        if not token:
            return subjects


def _segment_event(kind: str, subject: str, segment: str) -> event_pb2.Event:
    event = event_pb2.Event(event_id=f"{kind}-{subject}-{segment}", event_type=kind, subject_id=subject)
    event.attributes.update({"segment": segment})
    return event


async def test_every_profile_and_each_segment_are_listed_in_pages_without_the_erased(svc: Rules) -> None:
    """Pages of two cover every subject once in order; a segment lists its members, whichever write put them there."""
    for subject in ("eve", "ann", "dan", "cat", "bob"):
        await svc.profile(subject, traits={"plan": "pro"})
    await svc.profiles.ApplyProfileEvents(P.ApplyProfileEventsRequest(events=[
        _segment_event("segment.entered", "ann", "vip"), _segment_event("segment.entered", "dan", "vip"),
        _segment_event("segment.entered", "eve", "vip"), _segment_event("segment.exited", "eve", "vip"),
    ]), metadata=MD)
    await svc.profiles.UpdateProfile(P.UpdateProfileRequest(subject_id="bob", request_id="r1", enter_segments=["vip"]), metadata=MD)
    await svc.profiles.UpdateProfile(P.UpdateProfileRequest(subject_id="cat", request_id="r2", enter_segments=["vip"]), metadata=MD)
    await svc.profiles.UpdateProfile(P.UpdateProfileRequest(subject_id="cat", request_id="r3", exit_segments=["vip"]), metadata=MD)
    await svc.profiles.EraseProfile(P.EraseProfileRequest(subject_id="dan", reason="GDPR"), metadata=MD)
    assert await _all(svc) == ["ann", "bob", "cat", "eve"]
    assert await _all(svc, "vip") == ["ann", "bob"]
    assert await _all(svc, "vip", page_size=1) == ["ann", "bob"]
    assert await _all(svc, "nobody-in-it") == []
    page = await svc.profiles.ListProfiles(P.ListProfilesRequest(segment="vip"), metadata=MD)
    assert [p.subject_id for p in page.profiles] == ["ann", "bob"] and not page.next_page_token
    assert page.profiles[0].traits["plan"] == "pro" and list(page.profiles[0].segments) == ["vip"]


async def test_a_page_token_works_only_for_its_own_listing(svc: Rules) -> None:
    """A segment's token used for another segment or for every profile, or a forged token, is a page_token violation."""
    for subject in ("a", "b", "c"):
        await svc.profiles.UpdateProfile(P.UpdateProfileRequest(subject_id=subject, request_id=subject, enter_segments=["s"]), metadata=MD)
    token = (await svc.profiles.ListProfiles(P.ListProfilesRequest(segment="s", page_size=1), metadata=MD)).next_page_token
    for request in (P.ListProfilesRequest(segment="t", page_token=token), P.ListProfilesRequest(page_token=token),
                    P.ListProfilesRequest(page_token="garbage!"), P.ListProfilesRequest(page_size=1001)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await svc.profiles.ListProfiles(request, metadata=MD)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(field_violations(caught.value)) <= {"page_token", "page_size"}, request


async def test_a_segment_event_with_a_name_too_long_for_a_segment_is_refused(svc: Rules) -> None:
    """segment.entered with a 64-character segment is rejected at attributes.segment and changes nothing."""
    (result,) = (await svc.profiles.ApplyProfileEvents(P.ApplyProfileEventsRequest(events=[
        _segment_event("segment.entered", "z", "x" * 64)]), metadata=MD)).results
    assert not result.applied and [v.field for v in result.violations] == ["attributes.segment"]


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
async def test_the_migration_copies_existing_memberships(backend: str, database_url: str, tmp_path: Path) -> None:
    """Profiles stored before migration 0006 are in their segments after it; erased ones and over-long names are not."""
    url = database_url if backend == "postgresql" else f"sqlite+aiosqlite:///{tmp_path}/rules.db"
    await migrate(url, script_location=MIGRATIONS, version_table="rules_alembic_version", revision="0005")
    db = Database(url, pool_size=1, max_overflow=0)
    try:
        async with db.begin() as conn:
            await conn.execute(sa.insert(profiles), [
                dict(tenant="acme", subject_id=subject, traits={}, segments=segments, suppression_lists=[], tags=[], timezone="",
                     erased=erased, create_time=NOW, update_time=NOW)
                for subject, segments, erased in (("ann", ["vip", "beta", "x" * 70], False), ("bob", ["vip"], False), ("gone", ["vip"], True))])
        await migrate(url, script_location=MIGRATIONS, version_table="rules_alembic_version")
        async with db.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT segment, subject_id FROM rules_segment_members ORDER BY 1, 2"))).all()
        assert [tuple(r) for r in rows] == [("beta", "ann"), ("vip", "ann"), ("vip", "bob")]
    finally:
        await db.close()
