"""Unit tests of :class:`overture_runtime.redis.Keys`: scoped, hash-tagged Redis keys."""

from __future__ import annotations

import dataclasses
import re

import pytest

from overture_runtime.redis import Keys

SUBJECT = "alice@example.com"
TAG = re.compile(r"\{([^}]*)\}")


def _tag(key: str) -> str:
    """The Redis Cluster hash tag of *key* (the text of its first {...})."""
    match = TAG.search(key)
    assert match is not None, key
    return match.group(1)


def test_default_namespace_is_ovt() -> None:
    """Keys are under the namespace ovt unless told otherwise."""
    assert Keys().tenant("acme", "x").startswith("ovt:")


def test_tenant_key_layout() -> None:
    """A tenant key is namespace:t:tenant followed by the parts, colon-separated."""
    assert Keys("ns").tenant("acme", "profiles", "cache") == "ns:t:acme:profiles:cache"
    assert Keys("ns").tenant("acme") == "ns:t:acme"


def test_subject_key_is_hash_tagged_under_the_tenant() -> None:
    """A subject key is namespace:t:tenant:{s<tag>} followed by the parts."""
    key = Keys("ns").subject("acme", SUBJECT, "caps", "email")
    assert re.fullmatch(r"ns:t:acme:\{s[0-9a-f]{20}\}:caps:email", key), key


def test_subject_key_never_contains_the_subject_id() -> None:
    """The raw subject id, which may be personal data, never appears in the key."""
    for subject in (SUBJECT, "user-12345", "{evil}"):
        key = Keys("ns").subject("acme", subject, "state")
        assert subject not in key
        assert key.count("{") == key.count("}") == 1


def test_keys_of_one_subject_share_one_hash_tag() -> None:
    """All keys of one subject, whatever their parts, have the same hash tag, so they share a slot."""
    keys = Keys("ns")
    tags = {_tag(keys.subject("acme", SUBJECT, *parts)) for parts in [(), ("caps",), ("profile", "v2"), ("a", "b", "c")]}
    assert len(tags) == 1
    assert _tag(Keys("other").subject("acme", SUBJECT)) in tags


def test_different_subjects_or_tenants_get_different_tags() -> None:
    """The tag depends on both the tenant and the subject."""
    keys = Keys("ns")
    assert _tag(keys.subject("acme", SUBJECT)) != _tag(keys.subject("acme", "bob@example.com"))
    assert _tag(keys.subject("acme", SUBJECT)) != _tag(keys.subject("globex", SUBJECT))


def test_tenant_subject_boundary_is_unambiguous() -> None:
    """Moving characters between tenant and subject id changes the tag."""
    keys = Keys("ns")
    assert _tag(keys.subject("ab", "c")) != _tag(keys.subject("a", "bc"))


def test_stream_key_is_hash_tagged_per_partition() -> None:
    """Each stream partition has its own {p<n>} hash tag."""
    keys = Keys("ns")
    assert keys.stream("events", 3) == "ns:stream:events:{p3}"
    assert {_tag(keys.stream("events", p)) for p in range(8)} == {f"p{p}" for p in range(8)}


def test_keys_is_immutable() -> None:
    """Keys is a frozen value: its namespace cannot be changed, and equal namespaces make equal builders."""
    keys = Keys("ns")
    with pytest.raises(dataclasses.FrozenInstanceError):
        keys.namespace = "other"  # type: ignore[misc]
    assert keys == Keys("ns")
    assert hash(keys) == hash(Keys("ns"))
