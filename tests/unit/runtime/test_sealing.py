"""Unit tests of sealed tokens and message links (:mod:`overture_runtime.sealing`, :mod:`overture_runtime.links`)."""

from __future__ import annotations

import datetime as dt

import pytest

from overture_runtime.links import Click, Links, Open, Unsubscribe
from overture_runtime.sealing import BadToken, Sealer

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
KEY, OLD_KEY = "k" * 32, "o" * 32


def test_a_sealed_token_opens_to_its_fields_and_hides_them() -> None:
    """A token opens to the fields sealed into it, and does not show them in clear."""
    sealer = Sealer([KEY])
    token = sealer.seal("inbox", ["acme", "alice@example.com"], now=NOW)
    assert "alice" not in token and "acme" not in token
    assert sealer.open("inbox", token, now=NOW, arity=2) == ["acme", "alice@example.com"]


def test_a_token_for_one_purpose_does_not_open_for_another() -> None:
    """An open-tracking token is refused where an unsubscribe token is expected."""
    sealer = Sealer([KEY])
    with pytest.raises(BadToken, match="not a unsubscribe token"):
        sealer.open("unsubscribe", sealer.seal("open", ["acme", "k"], now=NOW), now=NOW, arity=2)


def test_an_altered_or_foreign_token_is_refused() -> None:
    """A token with one character changed, or sealed with an unknown key, does not open."""
    token = Sealer([KEY]).seal("open", ["acme", "k"], now=NOW)
    altered = token[:20] + ("A" if token[20] != "A" else "B") + token[21:]
    with pytest.raises(BadToken):
        Sealer([KEY]).open("open", altered, now=NOW, arity=2)
    with pytest.raises(BadToken):
        Sealer(["x" * 32]).open("open", token, now=NOW, arity=2)


def test_keys_rotate_the_first_seals_every_one_opens() -> None:
    """A token sealed with the old key still opens once a new key is put first, and not once the old key is dropped."""
    token = Sealer([OLD_KEY]).seal("open", ["acme", "k"], now=NOW)
    assert Sealer([KEY, OLD_KEY]).open("open", token, now=NOW, arity=2) == ["acme", "k"]
    with pytest.raises(BadToken):
        Sealer([KEY]).open("open", token, now=NOW, arity=2)


def test_a_token_expires_at_its_expiry_by_the_injected_clock() -> None:
    """A token sealed with an expiry opens before it and is refused at it."""
    sealer = Sealer([KEY])
    token = sealer.seal("inbox", ["acme", "bob"], now=NOW, expires=NOW + dt.timedelta(hours=1))
    assert sealer.open("inbox", token, now=NOW + dt.timedelta(minutes=59), arity=2) == ["acme", "bob"]
    with pytest.raises(BadToken, match="expired"):
        sealer.open("inbox", token, now=NOW + dt.timedelta(hours=1), arity=2)


def test_no_key_seals_nothing_and_opens_nothing() -> None:
    """Without a key the sealer is disabled: sealing raises, opening refuses."""
    sealer = Sealer([])
    assert not sealer.enabled
    with pytest.raises(RuntimeError):
        sealer.seal("open", ["a"], now=NOW)
    with pytest.raises(BadToken):
        sealer.open("open", "abc", now=NOW, arity=1)


def test_a_short_key_is_refused() -> None:
    """A key under 16 characters is a configuration error."""
    with pytest.raises(ValueError, match="16"):
        Sealer(["short"])


@pytest.mark.parametrize("token", ["", "not a token", "é" * 40, "A" * 9000, "gAAAAA"])
def test_garbage_is_a_bad_token(token: str) -> None:
    """Anything that is not a sealed token is refused with BadToken, never another exception."""
    with pytest.raises(BadToken):
        Sealer([KEY]).open("open", token, now=NOW, arity=2)


def test_links_carry_what_they_stand_for_under_the_public_url() -> None:
    """Unsubscribe, open and click links live under the public URL and read back to what made them."""
    links = Links(Sealer([KEY]), "https://t.example.com/")
    unsubscribe = Unsubscribe("acme", "alice", "email", "marketing", "run-1:send")
    url = links.unsubscribe_url(unsubscribe, now=NOW)
    assert url.startswith("https://t.example.com/l/unsubscribe/")
    assert links.read_unsubscribe(url.rsplit("/", 1)[1], now=NOW) == unsubscribe
    assert links.read_open(links.open_url(Open("acme", "run-1:send"), now=NOW).rsplit("/", 1)[1], now=NOW) == Open("acme", "run-1:send")
    click = Click("acme", "run-1:send", "https://example.com/a?b=c&d=e")
    assert links.read_click(links.click_url(click, now=NOW).rsplit("/", 1)[1], now=NOW) == click
