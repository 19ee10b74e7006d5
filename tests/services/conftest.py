"""Fixtures for service unit tests: connectors on SQLite and one in-memory platform."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.doubles.connector import Node, double_node
from tests.doubles.platform import PlatformDouble

MakeNode = Callable[..., Awaitable[Node]]


@pytest.fixture
def platform() -> PlatformDouble:
    return PlatformDouble()


@pytest.fixture
async def make_node(tmp_path: Path, platform: PlatformDouble) -> AsyncIterator[MakeNode]:
    """``await make_node("alice", **settings)``: a connector on ``platform``."""
    async with AsyncExitStack() as stack:

        async def make(name: str, **overrides: Any) -> Node:
            return await stack.enter_async_context(
                double_node(tmp_path / name, platform, **overrides)
            )

        yield make
