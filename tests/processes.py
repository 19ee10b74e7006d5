"""The ``connector`` command run as a user runs it, in real subprocesses that never outlive a test.

Every wait is bounded, and whatever is still running when a helper's block ends, passed or not,
gets SIGTERM and then, if it lingers, SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import tomllib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from tests import databases

CLI = [sys.executable, "-m", "connector.cli"]
"""``connector`` from this interpreter's environment."""

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A loopback port that was free a moment ago (bind to 0, read it, close it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**variables: str) -> dict[str, str]:
    """This environment without the test runner's own ``CONNECTOR_*`` variables, plus these.

    A child process reads ``CONNECTOR_*`` as configuration, so one left over from the shell that
    started pytest would change what the test runs.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOR_")}
    return {**env, **variables}


def serve_env(args: tuple[str, ...], env: Mapping[str, str], cwd: Path | None) -> dict[str, str]:
    """``env`` for ``connector serve *args``; on the PostgreSQL pass, with its data dir's database.

    The data dir is where the command would put it (``CONNECTOR_DATA_DIR``, else the config
    file's ``data_dir``, else ``./data``), so a second serve on it finds the same database. A
    database the environment or the config file names is left alone.
    """
    env = dict(env)
    if not databases.ON_POSTGRES or env.get("CONNECTOR_DATABASE__URL"):
        return env
    config: dict[str, object] = {}
    path = args[args.index("--config") + 1] if "--config" in args else env.get("CONNECTOR_CONFIG")
    if path:
        try:
            with (cwd or Path.cwd()).joinpath(path).open("rb") as fh:
                config = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError):
            return env  # serve says what is wrong with it
    named = config.get("database")
    if isinstance(named, dict) and named.get("url"):
        return env
    data_dir = env.get("CONNECTOR_DATA_DIR") or str(config.get("data_dir", "./data"))
    env["CONNECTOR_DATABASE__URL"] = databases.database_for((cwd or Path.cwd()) / data_dir)
    return env


async def stop(process: asyncio.subprocess.Process, within: float = 30) -> int:
    """SIGTERM, as a user's Ctrl-C or a service manager would; SIGKILL if it outlives ``within``.

    Returns the exit status (negative: the signal that ended it).
    """
    if process.returncode is None:
        with suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), within)
        except TimeoutError:
            with suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode


_ON_ITS_DATABASE = {("serve",), ("keys",)}
"""Commands that open the connector's own database (the rest talk to its API)."""


async def run_to_end(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    within: float = 120,
) -> tuple[int, str, str]:
    """Run ``connector *args`` to its end: exit status, stdout, stderr.

    ``env`` adds to (or overrides) this environment. Killed, never left behind, if it outlives
    ``within`` (the test then fails with ``TimeoutError``).
    """
    process = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=serve_env(args, {**os.environ, **(env or {})}, cwd)
        if args[:1] in _ON_ITS_DATABASE
        else {**os.environ, **(env or {})},
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), within)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode or 0, out.decode(), err.decode()


@dataclass
class Served:
    """A running ``connector serve``: the process, its banner, and its output since."""

    process: asyncio.subprocess.Process
    banner: str
    _output: list[bytes] = field(default_factory=list)

    def output(self) -> str:
        """Everything it printed after the banner, stdout and stderr interleaved (its log)."""
        return b"".join(self._output).decode(errors="replace")


@asynccontextmanager
async def serving(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> AsyncIterator[Served]:
    """``connector serve *args`` until its banner is out; stopped (SIGTERM) when the block ends.

    ``env`` is the whole environment of the process (default: this one). Its output keeps being
    read after the banner, so a chatty log never fills a pipe and stalls the server.
    """
    process = await asyncio.create_subprocess_exec(
        *CLI,
        "serve",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=serve_env(args, os.environ if env is None else env, cwd),
        cwd=cwd,
    )
    assert process.stdout is not None and process.stderr is not None
    served = Served(process, "")
    drains: list[asyncio.Task[None]] = []

    async def drain(stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(1 << 16):
            served._output.append(chunk)

    try:
        drains.append(asyncio.create_task(drain(process.stderr)))
        while "try:" not in served.banner:
            line = await asyncio.wait_for(process.stdout.readline(), 60)
            assert line, f"serve exited before printing its banner:\n{served.output()}"
            served.banner += line.decode()
        drains.append(asyncio.create_task(drain(process.stdout)))
        yield served
    finally:
        await stop(process)
        if drains:  # the pipes close with the process; a bounded wait all the same
            _, stuck = await asyncio.wait(drains, timeout=10)
            for task in stuck:
                task.cancel()
