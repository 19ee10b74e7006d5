"""Fixtures for the crash tests: a cluster of real processes, always cleaned up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.reliability.harness import Cluster


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with aiohttp.ClientSession() as http:
        procs = Cluster(tmp_path, http)
        try:
            yield procs
        finally:
            await procs.close()
