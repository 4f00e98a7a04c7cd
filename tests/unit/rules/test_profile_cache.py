"""The per-process profile views: bounded, dropped after their lifetime or
a local write, and keyed like the Redis keys they shadow."""

from __future__ import annotations

import datetime as dt

from overture.common.v1 import messaging_pb2
from overture_rules.engine import ProfileView, channel_name
from overture_rules.profile_cache import LocalViews, SubjectKeys, fresh_generation
from overture_runtime.redis import Keys

KEYS = Keys("t")


def test_subject_keys_are_the_keys_of_the_subject() -> None:
    """The keys a decision touches are exactly those Keys.subject names for the subject."""
    keys = SubjectKeys.of(KEYS, "acme", "u@example.com")
    assert keys.view == KEYS.subject("acme", "u@example.com", "profile")
    assert keys.generation == KEYS.subject("acme", "u@example.com", "profile-gen")
    assert keys.ledger[:4] == tuple(KEYS.subject("acme", "u@example.com", "caps", part) for part in "zhox")
    channels = [channel_name(c) for c in messaging_pb2.Channel.values()]
    assert keys.ledger[4:] == tuple(KEYS.subject("acme", "u@example.com", "caps", "c", name) for name in channels)
    # caps.lua finds a channel's set by the name that follows the counted set's prefix and "c:".
    assert all(key == keys.ledger[0][:-1] + "c:" + name for key, name in zip(keys.ledger[4:], channels, strict=True))


def test_a_kept_view_expires_after_its_lifetime() -> None:
    """A view is dropped (with its memo) once its lifetime is over, so no generation can outlive it."""
    now = [100.0]
    views = LocalViews(KEYS, ttl=dt.timedelta(seconds=10), monotonic=lambda: now[0])
    entry = views.entry("acme", "u")
    views.store(entry, ProfileView("u"), "7")
    entry.memo["x"] = 1
    now[0] = 109.0
    assert views.entry("acme", "u").view is not None
    now[0] = 110.0
    again = views.entry("acme", "u")
    assert again.view is None and again.generation == "" and again.memo == {}


def test_the_cache_holds_at_most_its_size() -> None:
    """Past its size, the least recently used subject is dropped."""
    views = LocalViews(KEYS, size=2)
    for subject in ("a", "b"):
        views.store(views.entry("acme", subject), ProfileView(subject), "1")
    views.entry("acme", "a")  # used: b is now the oldest
    views.entry("acme", "c")
    assert views.entry("acme", "a").view is not None
    assert views.entry("acme", "b").view is None


def test_a_local_write_forgets_the_view_and_a_new_view_starts_a_new_memo() -> None:
    """Forgetting drops the view and its memo; storing a different view clears the memo derived from the old one."""
    views = LocalViews(KEYS)
    entry = views.entry("acme", "u")
    views.store(entry, ProfileView("u"), "1")
    entry.memo["x"] = 1
    views.store(entry, entry.view, "2")  # type: ignore[arg-type]
    assert entry.memo == {"x": 1}
    views.store(entry, ProfileView("u", timezone="UTC"), "3")
    assert entry.memo == {}
    views.forget("acme", ["u"])
    assert entry.view is None and entry.generation == ""


def test_fresh_generations_are_random_integers() -> None:
    """A fresh generation is an integer (INCR still works on it) and does not repeat."""
    seen = {fresh_generation() for _ in range(1000)}
    assert len(seen) == 1000 and all(int(g) >= 0 for g in seen)


def test_a_cached_view_reads_back_as_it_was_written() -> None:
    """A view cached in Redis, big integers and non-ASCII text included, loads back equal, with its generation."""
    from overture_rules.profile_cache import _dump, load_view

    view = ProfileView("u", traits={"n": 2**70, "name": "Zoë", "score": 1.5, "tags": ["a"]}, granted=frozenset({("email", "marketing")}),
                       segments=("vip",), timezone="Europe/Berlin", suppression_lists=frozenset({"x"}), exists=True)
    assert load_view("u", _dump(view, "42")) == (view, "42")


def test_replay_inputs_are_json_whatever_the_traits_hold() -> None:
    """The replay JSON of a decision parses back to encode()'s value, big integers included."""
    import json

    from overture_rules.engine import EvaluationInput
    from overture_rules.replay import encode, encode_json, profile_json

    view = ProfileView("u", traits={"n": 2**70, "name": "Zoë"})
    message = EvaluationInput(channel=1, category=1, now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), tags=("promo",), priority=3, context={"k": "v"})
    assert json.loads(encode_json(profile_json(view), message, ())) == json.loads(json.dumps(encode(view, message, ())))
