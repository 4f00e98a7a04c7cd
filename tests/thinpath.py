"""The thin path every environment must pass: a rule set, a journey, and
events for a consenting and a non-consenting subject."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from overture.orchestrator.v1 import journey_pb2
from overture.rules.v1 import rule_set_pb2
from overture_cli.specfile import load_spec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
T = TypeVar("T")


def example_rule_set() -> tuple[str, rule_set_pb2.RuleSetSpec]:
    """The tour's rule set: email consent plus one expression."""
    return load_spec(EXAMPLES / "marketing-email.yaml", rule_set_pb2.RuleSetSpec)


def example_journey() -> tuple[str, journey_pb2.JourneySpec]:
    """The tour's journey: on user.signed_up, send the welcome email."""
    return load_spec(EXAMPLES / "welcome-journey.yaml", journey_pb2.JourneySpec)


async def eventually(probe: Callable[[], Awaitable[T | None]], *, within: float = 20.0, what: str = "condition") -> T:
    """Poll *probe* until it returns a truthy value, or fail after *within* seconds."""
    deadline = asyncio.get_running_loop().time() + within
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")
