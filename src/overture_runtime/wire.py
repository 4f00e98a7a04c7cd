"""Responses built as protobuf wire bytes, for the few large ones where
copying each part into a response message (and gRPC serializing it again)
costs more than the work behind it (``EvaluateBatch``: a thousand decisions).

A servicer returns :class:`Encoded`; the interceptors' response serializer
(:mod:`.interceptors`) sends it as it is. Protobuf's wire format makes a
repeated message field the concatenation of its elements, each framed as
tag, length and bytes (:func:`message_field`), so a response is the join of
its parts, each serialized by protobuf itself.
"""

from __future__ import annotations

__all__ = ["Encoded", "message_field"]


class Encoded:
    """A response message already serialized to its wire bytes, :attr:`data`."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def message_field(number: int, payload: bytes) -> bytes:
    """Field *number* (a message, or one element of a repeated message field) holding the serialized *payload*."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload
