"""Every test in this package takes ``make_world`` (or ``world``), so it runs once against the
in-memory platform double and once against a real backbone on loopback: one contract, two
implementations (see ``tests/contract/worlds.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from backbone.server import start_embedded
from tests.contract.worlds import BackboneWorld, DoubleWorld, World, WorldFactory


@pytest.fixture(params=["double", "backbone"])
async def make_world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[WorldFactory]:
    """``await make_world(**limits)``: a fresh platform of this run's kind."""
    async with AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        count = 0

        async def make(**limits: Any) -> World:
            nonlocal count
            if request.param == "double":
                return DoubleWorld(**limits)
            count += 1
            runner, url = await start_embedded(tmp_path / f"backbone-{count}", **limits)
            stopped = False

            async def stop() -> None:
                nonlocal stopped
                if not stopped:
                    stopped = True
                    await runner.cleanup()

            stack.push_async_callback(stop)
            return BackboneWorld(url, session, stop)

        yield make


@pytest.fixture
async def world(make_world: WorldFactory) -> World:
    return await make_world()
