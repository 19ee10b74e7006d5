"""`connector backbone` with limits on its command line: a real subprocess on a free port."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from backbone.options import LARGEST, positive_int
from connector.crypto import IdentityKeys, registration_proof
from tests.backbone.conftest import Peer, client_for
from tests.backbone.test_quotas import put_envelope
from tests.processes import CLI, free_port, run_to_end, stop


@asynccontextmanager
async def backbone_process(data_dir: Path, *flags: str) -> AsyncIterator[tuple[str, str]]:
    """``connector backbone`` running with ``flags``: its URL and its start-up limits line.

    Stopped with SIGTERM at the end (and must exit 0); killed if anything went wrong before.
    """
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *CLI,
        "backbone",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        *flags,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        limits = ""
        while "backbone limits:" not in limits:
            line = await asyncio.wait_for(process.stderr.readline(), 60)
            assert line, "connector backbone exited before logging its limits"
            limits = line.decode()
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                try:
                    async with http.get(url + "/v1/health") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert process.returncode is None, "connector backbone exited"
                await asyncio.sleep(0.1)
            else:
                pytest.fail("connector backbone never answered /v1/health")
        yield url, limits
        assert await stop(process) == 0
    finally:
        await stop(process)


async def registered(url: str, session: aiohttp.ClientSession) -> Peer:
    keys = IdentityKeys.generate()
    client = client_for(url, session, keys)
    await client.register(keys.signing_public, keys.exchange_public, registration_proof(keys))
    return Peer(keys, client)


async def test_envelopes_per_day_from_the_command_line(tmp_path: Path) -> None:
    async with (
        backbone_process(
            tmp_path / "data", "--envelopes-per-day", "2", "--max-recipients", "5"
        ) as (url, limits),
        aiohttp.ClientSession() as session,
    ):
        # one line shows every effective limit, given or default
        assert " envelopes_per_day=2 " in limits and " max_recipients=5 " in limits
        assert f" max_stored_bytes={10 * 1024**3} " in limits
        alice, bob = await registered(url, session), await registered(url, session)
        statuses = []
        for _ in range(3):
            status, problem, retry_after = await put_envelope(session, url, alice, alice.to(bob))
            statuses.append(status)
        assert statuses == [201, 201, 429]
        assert problem["code"] == "quota_exceeded" and retry_after is not None


async def test_bad_limits_are_refused_with_one_clear_line() -> None:
    code, out, err = await run_to_end("backbone", "--envelopes-per-day", "0", within=60)
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.splitlines()[-1] == (
        "connector backbone: error: argument --envelopes-per-day:"
        " must be a positive integer, not '0'"
    )


@pytest.mark.parametrize("text", ["0", "-1", "ten", "1.5", "1e6", "", str(LARGEST + 1)])
def test_limits_must_be_positive_integers(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="must be"):
        positive_int(text)


@pytest.mark.parametrize("text", ["1", "4194304", " 30 ", str(LARGEST)])
def test_positive_integers_are_accepted(text: str) -> None:
    assert positive_int(text) == int(text)
