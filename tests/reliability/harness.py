"""Real processes for crash tests: a backbone and connectors run as a user runs them.

Each process is ``python -m connector.cli ...`` with its output in a log file (appended across
restarts, with a marker line per start), so an assertion can show the tail of what it printed.
Every wait is bounded; :class:`Cluster` kills whatever is still running when the test ends,
whether it passed or not.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from connector.crypto.at_rest import MASTER_KEY_FILENAME
from tests import databases
from tests.processes import CLI, REPO, clean_env, free_port

HEALTH_TIMEOUT = 45.0
"""Seconds a (re)started process may take to answer ``/health`` 200 (shared CI machine)."""


def _child_env() -> dict[str, str]:
    # The test runner's own CONNECTOR_* variables would override the config file.
    return clean_env(PYTHONUNBUFFERED="1")


class Proc:
    """One command, startable again after it dies; output appended to ``log_path``."""

    def __init__(self, name: str, argv: list[str], log_path: Path, health_url: str) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.health_url = health_url
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        assert not self.running, f"{self.name} is already running"
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== harness: start #{self.starts} of {self.name} =====\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env=_child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill9(self) -> None:
        """SIGKILL and reap (a real crash: no shutdown code runs)."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.kills += 1
        self.popen.wait(timeout=30)
        with self.log_path.open("ab") as log:
            log.write(
                f"===== harness: {self.name} killed (rc {self.popen.returncode}) =====\n".encode()
            )

    async def stop(self, grace: float = 15.0) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.popen.wait, grace)
            except subprocess.TimeoutExpired:
                pass
        self.kill9()

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return f"--- {self.name}: no log ---"
        kept = text.splitlines()[-lines:]
        return f"--- last {len(kept)} lines of {self.name} ({self.log_path}) ---\n" + "\n".join(
            kept
        )

    async def wait_healthy(
        self, http: aiohttp.ClientSession, within: float = HEALTH_TIMEOUT
    ) -> float:
        """Poll ``health_url`` until 200; returns the seconds it took. Fails with the log tail."""
        started = time.monotonic()
        deadline = started + within
        last = "no answer yet"
        while True:
            if self.popen is None or self.popen.poll() is not None:
                code = None if self.popen is None else self.popen.returncode
                raise AssertionError(
                    f"{self.name} exited (rc {code}) before it was healthy\n{self.tail()}"
                )
            try:
                async with http.get(
                    self.health_url, timeout=aiohttp.ClientTimeout(total=5)
                ) as response:
                    if response.status == 200:
                        return time.monotonic() - started
                    last = f"{response.status} {await response.text()}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name} not healthy within {within:.0f} s (last: {last})\n{self.tail()}"
                )
            await asyncio.sleep(0.1)


class Connector(Proc):
    """``connector serve --config`` with its own data dir, port and API key."""

    def __init__(
        self,
        name: str,
        root: Path,
        platform_url: str,
        *,
        database_url: str = "",
        key: str = "",
        extra_config: str = "",
        **sync: Any,
    ) -> None:
        """``database_url`` and ``key`` shared make replicas of one identity (with one
        master key: see :meth:`share_master_key`). Without ``database_url``: SQLite in the
        data dir, or on the PostgreSQL pass (TEST_DATABASE_URL) a database of its own."""
        self.data_dir = root / name
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.database_url = database_url or databases.database_for(self.data_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = key or f"test-key-{name}-0123456789"
        self.config = root / f"{name}.toml"
        sync_lines = "".join(f"{k} = {_toml(v)}\n" for k, v in {**_SYNC, **sync}.items())
        self.config.write_text(
            f'data_dir = "{self.data_dir}"\n'
            f'[server]\nhost = "127.0.0.1"\nport = {self.port}\n'
            f'[database]\nurl = "{self.database_url}"\n'
            f'[platform]\nurl = "{platform_url}"\nrequest_timeout = 5\n'
            f'[api]\nkeys = [{{ name = "t", key = "{self.key}", scopes = ["*"] }}]\n'
            f"[sync]\n{sync_lines}" + extra_config
        )
        super().__init__(
            name,
            [*CLI, "serve", "--config", str(self.config)],
            root / f"{name}.log",
            self.url + "/health",
        )
        self.address = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-KEY": self.key}

    def share_master_key(self, other: Connector) -> None:
        """Copy ``other``'s master key into this data dir (before the first start)."""
        target = self.data_dir / MASTER_KEY_FILENAME
        target.write_bytes((other.data_dir / MASTER_KEY_FILENAME).read_bytes())
        target.chmod(0o600)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "connector.sqlite3"

    async def fetch_address(self, http: aiohttp.ClientSession) -> str:
        async with http.get(self.url + "/api/v1/account/identity", headers=self.headers) as r:
            assert r.status == 200, f"{r.status} {await r.text()}\n{self.tail()}"
            self.address = (await r.json())["address"]
        return self.address

    async def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Read the connector's database: ``sql`` with ``?`` placeholders, on either kind.

        SQLite: a query-only connection (WAL allows it live); PostgreSQL: a connection of its own.
        """
        if self.database_url.startswith("postgresql"):
            return await _query_postgres(self.database_url, sql, params)
        return await asyncio.to_thread(_query, self.db_path, sql, params)

    async def scalar(self, sql: str, *params: Any) -> Any:
        rows = await self.query(sql, *params)
        return rows[0][0] if rows else None

    async def list_messages(
        self, http: aiohttp.ClientSession, direction: str, within: float = 30.0
    ) -> list[dict[str, Any]]:
        """Every message of one direction over the REST API, following ``nextCursor``."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        deadline = time.monotonic() + within
        while True:
            params = {"direction": direction, "limit": "1000"}
            if cursor:
                params["cursor"] = cursor
            async with http.get(
                self.url + "/api/v1/messages", params=params, headers=self.headers
            ) as response:
                assert response.status == 200, f"{response.status} {await response.text()}"
                page = await response.json()
            items.extend(page["items"])
            cursor = page["nextCursor"]
            if not cursor:
                return items
            assert time.monotonic() < deadline, "listing messages took too long"


_SYNC: dict[str, Any] = {"interval": 1, "long_poll": True}


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _query(db: Path, sql: str, params: Iterable[Any]) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(db, timeout=30)
    try:
        connection.execute("PRAGMA query_only = ON")
        return connection.execute(sql, tuple(params)).fetchall()
    finally:
        connection.close()


async def _query_postgres(url: str, sql: str, params: Iterable[Any]) -> list[tuple[Any, ...]]:
    numbered = iter(range(1, sql.count("?") + 1))
    connection = await asyncpg.connect(
        url.replace("postgresql+asyncpg://", "postgresql://", 1), timeout=10
    )
    try:
        rows = await connection.fetch(re.sub(r"\?", lambda _: f"${next(numbered)}", sql), *params)
    finally:
        await connection.close()
    return [tuple(row) for row in rows]


class Cluster:
    """A backbone and connectors under one test; :meth:`close` kills everything still running."""

    def __init__(self, root: Path, http: aiohttp.ClientSession) -> None:
        self.root = root
        self.http = http
        self.procs: list[Proc] = []
        self.backbone_url = ""

    async def start_backbone(self) -> Proc:
        port = free_port()
        self.backbone_url = f"http://127.0.0.1:{port}"
        proc = Proc(
            "backbone",
            [
                *CLI,
                "backbone",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(self.root / "backbone"),
            ],
            self.root / "backbone.log",
            self.backbone_url + "/v1/health",
        )
        self.procs.append(proc)
        proc.start()
        await proc.wait_healthy(self.http)
        return proc

    async def start_connectors(self, *names: str, **sync: Any) -> list[Connector]:
        """Start several connectors at once (in parallel), wait for health, read addresses."""
        assert self.backbone_url, "start the backbone first"
        nodes = [Connector(name, self.root, self.backbone_url, **sync) for name in names]
        for node in nodes:
            self.procs.append(node)
            node.start()
        await asyncio.gather(*(node.wait_healthy(self.http) for node in nodes))
        await asyncio.gather(*(node.fetch_address(self.http) for node in nodes))
        return nodes

    @property
    def backbone_db(self) -> Path:
        return self.root / "backbone" / "backbone.sqlite3"

    async def query_backbone(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Read the backbone's SQLite database (query-only), e.g. what it has accepted."""
        return await asyncio.to_thread(_query, self.backbone_db, sql, params)

    async def restart(self, proc: Proc) -> float:
        """kill -9, start again with the same command; seconds from the kill to health 200."""
        started = time.monotonic()
        proc.kill9()
        await self.revive(proc)
        return time.monotonic() - started

    async def revive(self, proc: Proc) -> float:
        """Start a stopped or killed process again; seconds until it is healthy."""
        started = time.monotonic()
        proc.start()
        await proc.wait_healthy(self.http)
        return time.monotonic() - started

    def report(self, what: str) -> str:
        """An assertion message: ``what`` plus the tail of every process's output."""
        return "\n".join([what, *(proc.tail() for proc in self.procs)])

    async def close(self) -> None:
        await asyncio.gather(*(proc.stop() for proc in reversed(self.procs)))


async def kill_when(proc: Proc, in_window: Callable[[], Awaitable[int]], within: float) -> bool:
    """kill -9 ``proc`` as soon as ``in_window()`` is positive, or after ``within`` s anyway.

    Aims a crash at a narrow moment (say, between the platform taking a message and the
    connector recording it); returns whether the moment was seen before the kill.
    """
    deadline = time.monotonic() + within
    seen = False
    while time.monotonic() < deadline:
        if await in_window() > 0:
            seen = True
            break
        await asyncio.sleep(0.005)
    proc.kill9()
    return seen
