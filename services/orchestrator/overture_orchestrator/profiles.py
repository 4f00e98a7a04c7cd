"""The profiles that conditions and templates read, from the rules service.

A batch's profiles come in one ``BatchGetProfiles`` call per tenant (of up to
1,000 subjects), not one call per run. A subject without a profile reads as
an empty one. A transient failure is kept as that subject's profile, so only
the steps that need it retry.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

from overture.rules.v1 import profile_service_pb2, profile_service_pb2_grpc
from overture_runtime.config import Settings
from overture_runtime.protojson import struct_to_dict
from overture_runtime.templates import profile_scope

from .calls import Transient, call

__all__ = ["ProfileReader", "Profiles"]

Profiles = dict[tuple[str, str], dict[str, Any] | Transient]
"""Profiles by (tenant, subject id): the ``profile`` scope, or why it could not be read."""
_CHUNK = 1000


class ProfileReader:
    """Reads profiles through ``ProfileService.BatchGetProfiles``."""

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

    async def profile_of(self, tenant: str, subject_id: str) -> dict[str, Any]:
        """One subject's ``profile`` scope; raises :class:`Transient`."""
        return (await self._batch(tenant, [subject_id]))[subject_id]

    async def _batch(self, tenant: str, subjects: list[str]) -> dict[str, dict[str, Any]]:
        try:
            response = await call(self._settings, self._profiles.BatchGetProfiles,
                                  profile_service_pb2.BatchGetProfilesRequest(subject_ids=subjects), tenant, "profiles")
        except grpc.aio.AioRpcError as error:  # refused: the steps that need it retry, then fail with this error
            raise Transient(f"profiles: {error.code().name}: {error.details()}") from None
        found = {}
        for result in response.results:
            profile = result.profile
            found[result.subject_id] = profile_scope(
                subject_id=result.subject_id, traits=struct_to_dict(profile.traits) if result.HasField("profile") else {},
                segments=profile.segments, timezone=profile.timezone)
        return found
