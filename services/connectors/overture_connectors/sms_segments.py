"""How an SMS body travels: its encoding, and the segments it is split into.

A text that uses only the GSM 03.38 default alphabet and its extension
table is sent in GSM-7: 160 septets fit one message; a longer text is
split into segments of 153 septets (7 octets go to the concatenation
header). Each extension character (``^ { } [ ~ ] | € \\f``) takes two
septets (an escape and the character), and the two are never split across
segments. Any other character sends the whole text in UCS-2: 70 UTF-16
code units fit one message, 67 per segment when split, and a surrogate
pair (an emoji) is never split across segments. Providers bill per
segment, so the count is recorded on the delivery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["GSM7_BASIC", "GSM7_EXTENSION", "Segments", "split"]

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
"""The GSM 03.38 default alphabet: one septet each."""
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")
"""The GSM 03.38 extension table: two septets each (an escape, then the character)."""

_LIMITS = {"gsm7": (160, 153), "ucs2": (70, 67)}


@dataclass(frozen=True)
class Segments:
    """A text as it is sent."""

    encoding: Literal["gsm7", "ucs2"]
    """GSM-7 when every character is in the default alphabet or its extension table, else UCS-2."""
    parts: tuple[str, ...]
    """The text of each segment, in order; none for an empty text."""
    units: int
    """The text's length in septets (GSM-7) or UTF-16 code units (UCS-2)."""

    @property
    def count(self) -> int:
        """The number of segments."""
        return len(self.parts)


def _cost(char: str, encoding: str) -> int:
    if encoding == "gsm7":
        return 2 if char in GSM7_EXTENSION else 1
    return 2 if ord(char) > 0xFFFF else 1  # a surrogate pair in UTF-16


def split(text: str) -> Segments:
    """*text* split into the segments it is sent as."""
    encoding: Literal["gsm7", "ucs2"] = "gsm7" if all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text) else "ucs2"
    single, multi = _LIMITS[encoding]
    units = sum(_cost(c, encoding) for c in text)
    if not text:
        return Segments(encoding, (), 0)
    if units <= single:
        return Segments(encoding, (text,), units)
    parts: list[str] = []
    current: list[str] = []
    used = 0
    for char in text:
        cost = _cost(char, encoding)
        if used + cost > multi:  # a two-unit character moves whole to the next segment
            parts.append("".join(current))
            current, used = [], 0
        current.append(char)
        used += cost
    parts.append("".join(current))
    return Segments(encoding, tuple(parts), units)
