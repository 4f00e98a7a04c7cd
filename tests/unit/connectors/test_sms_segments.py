"""Unit tests of SMS encoding and segment counting (GSM-7 with its extension table, UCS-2)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overture_connectors.sms_segments import GSM7_BASIC, GSM7_EXTENSION, split


@pytest.mark.parametrize(("text", "encoding", "count"), [
    ("", "gsm7", 0),
    ("a" * 160, "gsm7", 1), ("a" * 161, "gsm7", 2), ("a" * 306, "gsm7", 2), ("a" * 307, "gsm7", 3),
    ("€" * 80, "gsm7", 1), ("€" * 81, "gsm7", 2), ("a" * 159 + "€", "gsm7", 2),
    ("Grüße aus Köln? ¿Qué tal, señor Muñoz?", "gsm7", 1), ("¿Qué tal, Ñandú?", "ucs2", 1),  # ú is not GSM-7 (only ù)
    ("ç" * 70, "ucs2", 1),  # lower-case ç is not GSM-7 (only Ç is)
    ("Привет" * 11 + "Прив", "ucs2", 1), ("ж" * 71, "ucs2", 2), ("ж" * 134, "ucs2", 2), ("ж" * 135, "ucs2", 3),
    ("😀" * 35, "ucs2", 1), ("😀" * 36, "ucs2", 2), ("a" * 159 + "😀", "ucs2", 3),
])
def test_known_lengths_split_as_providers_bill_them(text: str, encoding: str, count: int) -> None:
    """160/153 septets for GSM-7 (extension characters count two), 70/67 code units for UCS-2 (an emoji counts two)."""
    segments = split(text)
    assert (segments.encoding, segments.count) == (encoding, count)


def test_an_escape_pair_and_a_surrogate_pair_are_never_split() -> None:
    """A 153rd septet that would start an extension character, or a 67th unit that would start an emoji, moves it whole."""
    gsm = split("a" * 152 + "€" + "b" * 10)
    assert gsm.parts[0] == "a" * 152 and gsm.parts[1].startswith("€")
    ucs = split("ж" * 66 + "😀" + "ж" * 5)
    assert ucs.parts[0] == "ж" * 66 and ucs.parts[1] == "😀" + "ж" * 5


@given(st.text(alphabet=st.sampled_from([*sorted(GSM7_BASIC | GSM7_EXTENSION), "ж", "😀", "ç"]), max_size=1200))
def test_segments_rejoin_to_the_text_and_each_fits(text: str) -> None:
    """For any text, the segments rejoin to it, each fits its encoding's per-segment limit, and the count is the fewest that fit."""
    segments = split(text)
    assert "".join(segments.parts) == text
    single, multi = (160, 153) if segments.encoding == "gsm7" else (70, 67)
    cost = (lambda c: 2 if c in GSM7_EXTENSION else 1) if segments.encoding == "gsm7" else (lambda c: 2 if ord(c) > 0xFFFF else 1)
    sizes = [sum(cost(c) for c in part) for part in segments.parts]
    assert sum(sizes) == segments.units
    assert all(size <= (single if segments.count == 1 else multi) for size in sizes)
    if segments.count > 1:
        assert segments.units > single and segments.count >= -(-segments.units // multi)
