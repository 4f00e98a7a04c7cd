"""What a decision record keeps to replay it: the inputs a rule set reads,
with personal data masked. Backtests evaluate candidate versions on it."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

import orjson

from overture.rules.v1 import decision_pb2
from overture_runtime.privacy import mask_mapping

from .engine import EvaluationInput, ProfileView

__all__ = ["decode", "encode", "encode_json", "profile_json"]


def _profile_part(profile: ProfileView) -> dict[str, Any]:
    return {
        "traits": mask_mapping(profile.traits), "granted": sorted(profile.granted), "revoked": sorted(profile.revoked),
        "segments": list(profile.segments), "timezone": profile.timezone, "lists": sorted(profile.suppression_lists),
        "erased": profile.erased, "exists": profile.exists,
    }


def _message_part(message: EvaluationInput, counters: tuple[decision_pb2.CapCounter, ...]) -> dict[str, Any]:
    return {
        "channel": int(message.channel), "category": int(message.category), "tags": list(message.tags),
        "priority": message.priority, "context": mask_mapping(message.context) if message.context else {}, "now": message.now.isoformat(),
        "caps": {c.cap_id: c.count for c in counters},
    }


def encode(profile: ProfileView, message: EvaluationInput, counters: tuple[decision_pb2.CapCounter, ...]) -> dict[str, Any]:
    """The replay input of a decision, masked."""
    return {**_profile_part(profile), **_message_part(message, counters)}


def profile_json(profile: ProfileView) -> str:
    """The profile's share of :func:`encode_json`, masked: the same for every
    decision on the same view, so it can be kept beside it."""
    return _dumps(_profile_part(profile))[1:-1]


def encode_json(profile_part: str, message: EvaluationInput, counters: tuple[decision_pb2.CapCounter, ...]) -> str:
    """:func:`encode` as JSON text, from the profile's share (:func:`profile_json`).
    orjson writes it: a tenth of the json module's time for the message's share."""
    return "{" + profile_part + "," + _dumps(_message_part(message, counters))[1:]


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # what orjson refuses (an integer past 64 bits) the json module still writes
        return json.dumps(value, separators=(",", ":"))


def decode(subject_id: str, data: Mapping[str, Any]) -> tuple[ProfileView, EvaluationInput, dict[str, int]]:
    """The profile, message and cap counts a decision was made on."""
    profile = ProfileView(
        subject_id=subject_id, traits=data["traits"], granted=frozenset(tuple(x) for x in data["granted"]),  # type: ignore[misc]
        revoked=frozenset(tuple(x) for x in data["revoked"]), segments=tuple(data["segments"]),  # type: ignore[misc]
        timezone=data["timezone"], suppression_lists=frozenset(data["lists"]), erased=data["erased"], exists=data["exists"],
    )
    message = EvaluationInput(
        channel=data["channel"], category=data["category"], now=dt.datetime.fromisoformat(data["now"]),
        tags=tuple(data["tags"]), priority=data["priority"], context=data["context"],
    )
    return profile, message, dict(data.get("caps", {}))
