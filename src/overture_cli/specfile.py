"""Reading rule sets and journeys from YAML into their protos.

The YAML is the proto's JSON mapping, with two conveniences for people
writing it by hand: enum values may be given by their short name in any
case (``channel: email`` for ``CHANNEL_EMAIL``), and durations may use
``s``, ``m``, ``h`` or ``d`` (``delay: {duration: 2d}``).
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

__all__ = ["SpecFileError", "load_spec"]

_M = TypeVar("_M", bound=Message)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class SpecFileError(Exception):
    """A file could not be read as the expected definition."""


def _enum_prefix(enum: EnumDescriptor) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"


def _fix(value: Any, descriptor: Descriptor) -> Any:
    if not isinstance(value, dict):
        return value
    fixed: dict[str, Any] = {}
    for key, item in value.items():
        field = descriptor.fields_by_name.get(key) or descriptor.fields_by_camelcase_name.get(key)
        if field is None:
            fixed[key] = item
            continue
        fixed[key] = _fix_field(item, field)
    return fixed


def _fix_field(value: Any, field: FieldDescriptor) -> Any:
    if field.is_repeated and isinstance(value, list) and not _is_map(field):
        return [_fix_scalar(v, field) for v in value]
    if _is_map(field) and isinstance(value, dict):
        assert field.message_type is not None
        value_field = field.message_type.fields_by_name["value"]
        return {k: _fix_scalar(v, value_field) for k, v in value.items()}
    return _fix_scalar(value, field)


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None and field.message_type.GetOptions().map_entry


def _fix_scalar(value: Any, field: FieldDescriptor) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM and isinstance(value, str):
        enum = field.enum_type
        assert enum is not None
        if value in enum.values_by_name:
            return value
        candidate = _enum_prefix(enum) + value.upper().replace("-", "_").replace("/", "_")
        return candidate if candidate in enum.values_by_name else value
    if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
        full = field.message_type.full_name
        if full == "google.protobuf.Duration" and isinstance(value, (str, int)):
            text = str(value)
            match = _DURATION.fullmatch(text)
            if not match:
                return text
            seconds = Decimal(match.group(1)) * _UNITS[match.group(2)]
            return f"{seconds.normalize():f}s"
        if full in ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.Timestamp"):
            return value
        return _fix(value, field.message_type)
    return value


def load_spec(path: Path, message_type: type[_M]) -> tuple[str, _M]:
    """Read *path*: a top-level ``name`` and the fields of *message_type*."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise SpecFileError(f"{path}: cannot read: {error}") from None
    if not isinstance(data, dict):
        raise SpecFileError(f"{path}: expected a mapping at the top level")
    name = data.pop("name", "")
    if not isinstance(name, str) or not name:
        raise SpecFileError(f"{path}: a top-level 'name' is required")
    message = message_type()
    try:
        json_format.ParseDict(_fix(data, message_type.DESCRIPTOR), message)  # type: ignore[arg-type]
    except json_format.ParseError as error:
        raise SpecFileError(f"{path}: {error}") from None
    return name, message
