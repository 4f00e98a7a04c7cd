"""Fixtures wider than one test, for integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from .journeys_support import World, journey_world


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    """One cluster for a module of journey tests, on a manual clock (see :mod:`.journeys_support`);
    its tests use ``pytestmark = pytest.mark.asyncio(loop_scope="module")``."""
    async with journey_world(tmp_path_factory.mktemp("mail")) as running:
        yield running
