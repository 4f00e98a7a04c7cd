"""Phone numbers as the connectors send them: E.164, parsed by ``phonenumbers``."""

from __future__ import annotations

from typing import Annotated

import phonenumbers
import pydantic

__all__ = ["Region", "e164"]


def _known(region: str) -> str:
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError("not a region (ISO 3166 alpha-2, upper case) phonenumbers knows")
    return region


Region = Annotated[str, pydantic.AfterValidator(_known)]
"""A provider's default region: where a number without a country code is read."""


def e164(number: str, region: str) -> str | None:
    """*number* in E.164, read in *region* when it has no country code; None when it is not a valid phone number."""
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
