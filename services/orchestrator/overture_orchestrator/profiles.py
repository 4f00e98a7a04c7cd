"""Profiles for the engine, through the rules service: read in one
``BatchGetProfiles`` call per tenant and batch (of up to 1,000 subjects),
not one call per run, and changed by update-profile steps (``UpdateProfile``,
once per run and step).

A subject without a profile reads as an empty one; an erased subject as
:data:`ERASED` (its runs end, never sending). A transient failure is kept as
that subject's profile, so only the steps that need it retry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import grpc
from google.protobuf import field_mask_pb2

from overture.rules.v1 import profile_pb2, profile_service_pb2, profile_service_pb2_grpc
from overture_runtime.config import Settings
from overture_runtime.protojson import struct_from_dict, struct_to_dict
from overture_runtime.templates import profile_scope

from .calls import Transient, call

__all__ = ["ERASED", "Erased", "ProfileReader", "Profiles", "scope_of"]


class Erased:
    """The profile of an erased subject."""

    def __repr__(self) -> str:
        return "ERASED"


ERASED: Final = Erased()
Profiles = dict[tuple[str, str], dict[str, Any] | Transient | Erased]
"""Profiles by (tenant, subject id): the ``profile`` scope, :data:`ERASED`, or why it could not be read."""
_CHUNK = 1000
_SCOPE_FIELDS = field_mask_pb2.FieldMask(paths=["traits", "segments", "timezone", "tags", "erased"])
"""What :func:`scope_of` and the erased check read: not the consents, which the rules service checks itself."""


class ProfileReader:
    """Reads and changes profiles through ``ProfileService``."""

    def __init__(self, *, profiles: profile_service_pb2_grpc.ProfileServiceStub, settings: Settings) -> None:
        self._profiles = profiles
        self._settings = settings

    async def load(self, wanted: Iterable[tuple[str, str]], into: Profiles) -> None:
        """Read the profiles of the (tenant, subject) pairs of *wanted* not yet in *into*, into it."""
        by_tenant: dict[str, list[str]] = {}
        for tenant, subject_id in wanted:
            if (tenant, subject_id) not in into:
                by_tenant.setdefault(tenant, []).append(subject_id)
        for tenant, subjects in by_tenant.items():
            subjects = list(dict.fromkeys(subjects))
            for start in range(0, len(subjects), _CHUNK):
                chunk = subjects[start:start + _CHUNK]
                try:
                    found = await self._batch(tenant, chunk)
                except Transient as error:
                    into.update({(tenant, s): error for s in chunk})
                    continue
                into.update({(tenant, s): found[s] for s in chunk})

    async def update(self, tenant: str, subject_id: str, *, request_id: str, set_traits: Mapping[str, Any], unset_traits: Iterable[str],
                     increment: Mapping[str, float], add_tags: Iterable[str], remove_tags: Iterable[str],
                     enter_segments: Iterable[str], exit_segments: Iterable[str]) -> dict[str, Any]:
        """Change a profile once per *request_id*; returns the ``profile``
        scope after the change, for the steps that follow. Raises
        :class:`Transient`, or the refusal (``grpc.aio.AioRpcError``) when
        the change is invalid."""
        request = profile_service_pb2.UpdateProfileRequest(
            subject_id=subject_id, set_traits=struct_from_dict(dict(set_traits)), unset_traits=list(unset_traits),
            increment=dict(increment), add_tags=list(add_tags), remove_tags=list(remove_tags), enter_segments=list(enter_segments),
            exit_segments=list(exit_segments), request_id=request_id)
        response = await call(self._settings, self._profiles.UpdateProfile, request, tenant, "profiles")
        return scope_of(subject_id, response.profile)

    async def _batch(self, tenant: str, subjects: list[str]) -> dict[str, dict[str, Any] | Erased]:
        try:
            response = await call(self._settings, self._profiles.BatchGetProfiles,
                                  profile_service_pb2.BatchGetProfilesRequest(subject_ids=subjects, read_mask=_SCOPE_FIELDS), tenant, "profiles")
        except grpc.aio.AioRpcError as error:  # refused: the steps that need it retry, then fail with this error
            raise Transient(f"profiles: {error.code().name}: {error.details()}") from None
        found: dict[str, dict[str, Any] | Erased] = {}
        for result in response.results:
            profile = result.profile
            if result.HasField("profile") and profile.erased:
                found[result.subject_id] = ERASED
                continue
            found[result.subject_id] = scope_of(result.subject_id, profile if result.HasField("profile") else None)
        return found


def scope_of(subject_id: str, profile: profile_pb2.Profile | None) -> dict[str, Any]:
    """The ``profile`` scope of a stored profile, or of one a caller sent (None: it has none yet)."""
    if profile is None:
        return profile_scope(subject_id=subject_id, traits={}, segments=[], timezone="")
    return profile_scope(subject_id=subject_id, traits=struct_to_dict(profile.traits), segments=profile.segments,
                         timezone=profile.timezone, tags=profile.tags)
