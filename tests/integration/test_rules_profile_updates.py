"""UpdateProfile on real PostgreSQL and Redis: one transaction per change,
once per request id (also under concurrency), tags read back by every
profile read, erased profiles untouched, and decisions of every replica see
the change at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from overture.rules.v1 import profile_service_pb2 as P
from overture_runtime.config import Settings

from .rules_support import MD, NUMBER, Rules, field_violations, running_rules, spec


@pytest.fixture
async def svc(make_settings: Callable[..., Settings]) -> AsyncIterator[Rules]:
    async with running_rules(make_settings) as running:
        yield running


def _update(subject: str, request_id: str, *, traits: dict[str, Any] | None = None, **fields: Any) -> P.UpdateProfileRequest:
    request = P.UpdateProfileRequest(subject_id=subject, request_id=request_id, **fields)
    request.set_traits.update(traits or {})
    return request


async def test_one_call_sets_unsets_increments_tags_and_segments(svc: Rules) -> None:
    """Traits are set, removed and added to, tags and segments change, and every profile read shows the tags."""
    await svc.profile("ann", traits={"plan": "free", "city": "Oslo", "score": 5})
    await svc.profiles.UpdateProfile(_update("ann", "seed", add_tags=["beta"], enter_segments=["trial"]), metadata=MD)
    response = await svc.profiles.UpdateProfile(_update(
        "ann", "r1", traits={"plan": "pro", "nickname": None}, unset_traits=["city"], increment={"score": 10, "visits": 1.5},
        add_tags=["vip", "vip"], remove_tags=["beta", "never-had"], enter_segments=["paying", "trial"], exit_segments=["trial-x", "trial2"],
    ), metadata=MD)
    profile = response.profile
    assert dict(profile.traits) == {"plan": "pro", "score": 15, "visits": 1.5}
    assert list(profile.tags) == ["vip"] and list(profile.segments) == ["trial", "paying"]
    assert list(response.entered_segments) == ["paying"] and not response.exited_segments
    left = await svc.profiles.UpdateProfile(_update("ann", "r2", exit_segments=["trial"]), metadata=MD)
    assert list(left.exited_segments) == ["trial"] and not left.entered_segments
    read = (await svc.profiles.GetProfile(P.GetProfileRequest(subject_id="ann"), metadata=MD)).profile
    assert list(read.tags) == ["vip"] and list(read.segments) == ["paying"]
    (batch,) = (await svc.profiles.BatchGetProfiles(P.BatchGetProfilesRequest(subject_ids=["ann"]), metadata=MD)).results
    assert list(batch.profile.tags) == ["vip"]


async def test_a_subject_without_a_profile_gets_one(svc: Rules) -> None:
    """UpdateProfile creates the profile of an unknown subject, a missing trait counting as 0."""
    response = await svc.profiles.UpdateProfile(_update("new", "r", increment={"lead_score": 10}, add_tags=["lead"]), metadata=MD)
    assert dict(response.profile.traits) == {"lead_score": 10} and list(response.profile.tags) == ["lead"]


async def test_a_repeated_request_id_changes_nothing_more_and_returns_the_first_answer(svc: Rules) -> None:
    """A repeat adds nothing again and returns the profile as the first call left it, even after later changes."""
    first = await svc.profiles.UpdateProfile(_update("u", "run-1:score", increment={"score": 10}, add_tags=["warm"]), metadata=MD)
    await svc.profiles.UpdateProfile(_update("u", "run-2:score", increment={"score": 1}), metadata=MD)
    again = await svc.profiles.UpdateProfile(_update("u", "run-1:score", increment={"score": 10}, add_tags=["warm"]), metadata=MD)
    assert again == first and again.profile.traits["score"] == 10
    now = (await svc.profiles.GetProfile(P.GetProfileRequest(subject_id="u"), metadata=MD)).profile
    assert now.traits["score"] == 11
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await svc.profiles.UpdateProfile(_update("u", "run-1:score", increment={"score": 99}), metadata=MD)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "already used" in (caught.value.details() or "")


async def test_concurrent_repeats_change_once_and_distinct_ids_all_count(svc: Rules) -> None:
    """Twenty concurrent calls with one request id add once; twenty with their own ids add twenty times, none lost."""
    same = await asyncio.gather(*(svc.profiles.UpdateProfile(_update("c", "once", increment={"n": 1}), metadata=MD) for _ in range(20)))
    assert {r.profile.traits["n"] for r in same} == {1}
    await asyncio.gather(*(svc.profiles.UpdateProfile(_update("c", f"each-{i}", increment={"n": 1}), metadata=MD) for i in range(20)))
    profile = (await svc.profiles.GetProfile(P.GetProfileRequest(subject_id="c"), metadata=MD)).profile
    assert profile.traits["n"] == 21


async def test_adding_to_a_trait_that_is_not_a_number_is_a_field_violation_and_changes_nothing(svc: Rules) -> None:
    """Incrementing a text trait is INVALID_ARGUMENT naming it; the rest of the change is not made and the id stays free."""
    await svc.profile("t", traits={"plan": "pro", "score": 1})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await svc.profiles.UpdateProfile(_update("t", "bad", increment={"plan": 1, "score": 1}, add_tags=["x"]), metadata=MD)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == {"increment[plan]": "NOT_A_NUMBER"}
    profile = (await svc.profiles.GetProfile(P.GetProfileRequest(subject_id="t"), metadata=MD)).profile
    assert profile.traits["score"] == 1 and not profile.tags
    await svc.profile("t", traits={"plan": 3})
    fixed = await svc.profiles.UpdateProfile(_update("t", "bad", increment={"plan": 1, "score": 1}, add_tags=["x"]), metadata=MD)
    assert fixed.profile.traits["plan"] == 4 and fixed.profile.traits["score"] == 2


async def test_an_erased_profile_takes_no_change(svc: Rules) -> None:
    """After erasure, UpdateProfile leaves the profile empty and answers it as erased."""
    await svc.profile("gone", traits={"email": "gone@example.com"})
    await svc.profiles.EraseProfile(P.EraseProfileRequest(subject_id="gone", reason="GDPR"), metadata=MD)
    response = await svc.profiles.UpdateProfile(_update("gone", "r", traits={"email": "back@example.com"}, add_tags=["vip"],
                                                        enter_segments=["s"]), metadata=MD)
    assert response.profile.erased and not response.profile.traits.fields and not response.profile.tags
    assert not response.profile.segments and not response.entered_segments


async def test_decisions_on_every_replica_see_the_change_at_once(make_settings: Callable[..., Settings]) -> None:
    """A replica that kept a subject's view decides on the new trait right after another replica's UpdateProfile."""
    async with running_rules(make_settings) as first, running_rules(make_settings) as second:
        await first.publish("scored", spec(attributes=[("score", NUMBER)], rules=[("hot", "score >= 10", "require")]))
        await first.consent("u")
        await first.profile("u", traits={"score": 0})
        for _ in range(3):  # the first replica keeps the view
            assert not (await first.evaluate(rule_set="scored", subject_id="u")).allowed
        await second.profiles.UpdateProfile(_update("u", "bump", increment={"score": 10}), metadata=MD)
        assert (await first.evaluate(rule_set="scored", subject_id="u")).allowed
