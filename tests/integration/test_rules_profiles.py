"""Profile events are applied in order, in one batch: traits merge, consent
changes are ordered by when they happened, segments enter and exit, and an
erased profile takes no new personal data."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from overture.common.v1 import event_pb2
from overture.rules.v1 import profile_pb2
from overture.rules.v1 import profile_service_pb2 as P
from overture_runtime.config import Settings

from .rules_support import MD, Rules, running_rules


@pytest.fixture
async def svc(make_settings: Callable[..., Settings]) -> AsyncIterator[Rules]:
    async with running_rules(make_settings) as running:
        yield running


def _event(event_type: str, subject: str, at: str, **attributes: Any) -> event_pb2.Event:
    event = event_pb2.Event(event_id=f"{event_type}-{subject}-{at}", event_type=event_type, subject_id=subject)
    event.attributes.update(attributes)
    event.occurred_at.FromJsonString(at)
    return event


async def test_profile_events_apply_in_order(svc: Rules) -> None:
    """Traits merge (null removes), a stale consent change loses to a newer one, and segments follow enter/exit."""
    events = [
        _event("identify", "u", "2026-01-01T00:00:00Z", traits={"plan": "free", "city": "Oslo"}),
        _event("consent.granted", "u", "2026-01-03T00:00:00Z", channel="email", purpose="marketing"),
        _event("consent.revoked", "u", "2026-01-02T00:00:00Z", channel="email", purpose="marketing"),  # older: ignored
        _event("identify", "u", "2026-01-04T00:00:00Z", traits={"plan": "pro", "city": None}, timezone="Europe/Oslo"),
        _event("segment.entered", "u", "2026-01-05T00:00:00Z", segment="vip"),
        _event("segment.entered", "u", "2026-01-05T00:00:01Z", segment="beta"),
        _event("segment.exited", "u", "2026-01-06T00:00:00Z", segment="beta"),
        _event("consent.granted", "u", "2026-01-07T00:00:00Z", channel="carrier-pigeon"),
        _event("item.viewed", "u", "2026-01-07T00:00:00Z"),
    ]
    results = (await svc.profiles.ApplyProfileEvents(P.ApplyProfileEventsRequest(events=events), metadata=MD)).results
    assert [r.applied for r in results] == [True] * 7 + [False, False]
    assert [v.field for v in results[7].violations] == ["attributes.channel"] and not results[8].violations
    profile = (await svc.profiles.GetProfile(P.GetProfileRequest(subject_id="u"), metadata=MD)).profile
    assert dict(profile.traits) == {"plan": "pro"} and profile.timezone == "Europe/Oslo"
    assert list(profile.segments) == ["vip"]
    (consent,) = profile.consents
    assert consent.status == profile_pb2.CONSENT_STATUS_GRANTED and consent.source == "event:consent.granted-u-2026-01-03T00:00:00Z"
    later = [_event("consent.revoked", "u", "2026-01-08T00:00:00Z", channel="email", purpose="marketing")]
    await svc.profiles.ApplyProfileEvents(P.ApplyProfileEventsRequest(events=later), metadata=MD)
    profile = (await svc.profiles.GetProfile(P.GetProfileRequest(subject_id="u"), metadata=MD)).profile
    assert profile.consents[0].status == profile_pb2.CONSENT_STATUS_REVOKED


async def test_an_erased_profile_takes_no_new_personal_data(svc: Rules) -> None:
    """After erasure, identify events leave the profile empty."""
    await svc.profile("gone", traits={"email": "gone@example.com"})
    await svc.profiles.EraseProfile(P.EraseProfileRequest(subject_id="gone", reason="GDPR"), metadata=MD)
    await svc.profiles.ApplyProfileEvents(P.ApplyProfileEventsRequest(events=[
        _event("identify", "gone", "2026-02-01T00:00:00Z", traits={"email": "again@example.com"})]), metadata=MD)
    profile = (await svc.profiles.GetProfile(P.GetProfileRequest(subject_id="gone"), metadata=MD)).profile
    assert profile.erased and not profile.traits.fields and not profile.consents


async def test_batch_get_profiles_answers_each_subject_in_order(svc: Rules) -> None:
    """BatchGetProfiles returns one result per subject asked, in order, repeats included, with no profile for an unknown subject."""
    await svc.profile("ann", traits={"email": "ann@example.com", "first_name": "Ann"}, timezone="Europe/Berlin")
    await svc.profile("bo", traits={"plan": "pro"})
    await svc.consent("ann")
    response = await svc.profiles.BatchGetProfiles(P.BatchGetProfilesRequest(subject_ids=["bo", "nobody", "ann", "bo"]), metadata=MD)
    assert [r.subject_id for r in response.results] == ["bo", "nobody", "ann", "bo"]
    assert [r.HasField("profile") for r in response.results] == [True, False, True, True]
    ann = response.results[2].profile
    assert ann.traits["first_name"] == "Ann" and ann.timezone == "Europe/Berlin"
    assert [(c.purpose, c.status) for c in ann.consents] == [("marketing", profile_pb2.CONSENT_STATUS_GRANTED)]
    single = await svc.profiles.GetProfile(P.GetProfileRequest(subject_id="ann"), metadata=MD)
    assert single.profile == ann


async def test_batch_get_profiles_refuses_an_empty_or_oversized_batch_and_bad_ids(svc: Rules) -> None:
    """BatchGetProfiles answers INVALID_ARGUMENT naming the field for no ids, more than 1,000, or an invalid id."""
    for ids, field in (([], "subject_ids"), ([f"s{i}" for i in range(1001)], "subject_ids"), (["ok", ""], "subject_ids[1]")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await svc.profiles.BatchGetProfiles(P.BatchGetProfilesRequest(subject_ids=ids), metadata=MD)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in str(caught.value.details()) + str(caught.value.trailing_metadata())


async def test_batch_get_profiles_returns_only_the_fields_its_read_mask_names(svc: Rules) -> None:
    """With a read mask, each profile carries only the named fields (and its subject id); without consents in
    it, no consent is read. An empty mask returns everything."""
    await svc.profile("ann", traits={"email": "ann@example.com"}, timezone="Europe/Berlin")
    await svc.consent("ann")
    masked = (await svc.profiles.BatchGetProfiles(P.BatchGetProfilesRequest(
        subject_ids=["ann", "nobody"], read_mask=field_mask_pb2.FieldMask(paths=["traits", "erased"])), metadata=MD)).results
    ann = masked[0].profile
    assert ann.subject_id == "ann" and ann.traits["email"] == "ann@example.com"
    assert not ann.consents and not ann.timezone and not ann.HasField("update_time")
    assert not masked[1].HasField("profile")
    with_consents = (await svc.profiles.BatchGetProfiles(P.BatchGetProfilesRequest(
        subject_ids=["ann"], read_mask=field_mask_pb2.FieldMask(paths=["consents"])), metadata=MD)).results[0].profile
    assert [c.purpose for c in with_consents.consents] == ["marketing"] and not with_consents.traits.fields
    whole = (await svc.profiles.BatchGetProfiles(P.BatchGetProfilesRequest(
        subject_ids=["ann"], read_mask=field_mask_pb2.FieldMask()), metadata=MD)).results[0].profile
    assert whole == (await svc.profiles.GetProfile(P.GetProfileRequest(subject_id="ann"), metadata=MD)).profile


async def test_batch_get_profiles_refuses_a_read_mask_naming_what_a_profile_lacks(svc: Rules) -> None:
    """An unknown or nested path, or one named twice, is INVALID_ARGUMENT naming the path."""
    for paths, field in ((["traits", "password"], "read_mask.paths[1]"), (["traits.email"], "read_mask.paths[0]"),
                         (["tags", "tags"], "read_mask.paths[1]"), (["traits"] * 50, "read_mask.paths")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await svc.profiles.BatchGetProfiles(P.BatchGetProfilesRequest(
                subject_ids=["ann"], read_mask=field_mask_pb2.FieldMask(paths=paths)), metadata=MD)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in str(caught.value.details()) + str(caught.value.trailing_metadata())
