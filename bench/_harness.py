"""Shared pieces of the benchmark scripts: processes, configs, health waits, RSS sampling, output.

Everything here talks to 127.0.0.1 only. Each product process (a backbone, a connector) runs as a
separate subprocess whose stdout and stderr go to a log file in the bench's temp dir, so a full
pipe can never stall it and its last lines can be shown when it dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
MIB = 1 << 20
PACKAGES = (
    "connector",
    "aiohttp",
    "cryptography",
    "sqlalchemy",
    "aiosqlite",
    "pydantic",
    "apscheduler",
)


class BenchError(Exception):
    """The benchmark cannot go on; the message says why (with a process's stderr tail)."""


# --------------------------------------------------------------------------- machine header


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str]:
    versions: dict[str, str] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "-"
    return versions


def git_revision() -> str:
    """The checked-out commit, ``+dirty`` with uncommitted changes, or '-'.

    Read-only: ``GIT_OPTIONAL_LOCKS=0`` keeps ``git status`` from refreshing the index.
    """
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", "-C", str(ROOT), *args],
            capture_output=True,
            text=True,
            timeout=10,
            env=env,
            check=False,
        )
        return out.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "-"
    return (commit or "-") + ("+dirty" if dirty else "")


def machine_info() -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "cpuCount": os.cpu_count(),
        "python": platform.python_version(),
        "packages": package_versions(),
        "commit": git_revision(),
    }


def header_line(info: dict[str, Any]) -> str:
    packages = " ".join(f"{k}={v}" for k, v in info["packages"].items())
    return (
        f"# {info['date']}  host={info['host']}  cpu={info['cpu']!r}  "
        f"cores={info['cores']}/{info['cpuCount']}  python={info['python']}  "
        f"commit={info['commit']}  {packages}"
    )


# --------------------------------------------------------------------------- output


@dataclass
class Row:
    metric: str
    value: str
    target: str = ""
    verdict: str = ""


def check(ok: bool | None) -> str:
    if ok is None:
        return ""
    return "PASS" if ok else "MISS"


def print_table(title: str, rows: Sequence[Row]) -> None:
    head = Row("metric", "value", "target", "")
    widths = [
        max(len(getattr(r, name)) for r in (head, *rows))
        for name in ("metric", "value", "target", "verdict")
    ]
    rule = "  ".join("-" * w for w in widths)
    print()
    print(title)
    print(rule)
    for r in (head, *rows):
        print(
            f"{r.metric:<{widths[0]}}  {r.value:>{widths[1]}}  "
            f"{r.target:<{widths[2]}}  {r.verdict:<{widths[3]}}".rstrip()
        )
    print(rule)


def print_summary(summary: dict[str, Any]) -> None:
    print(json.dumps(summary, separators=(",", ":"), sort_keys=False, default=str))


SUMMARY_MACHINE_KEYS = ("date", "host", "cpu", "cores", "python", "commit")


def summary_head(bench: str, info: dict[str, Any], **first: Any) -> dict[str, Any]:
    """The fields every JSON summary line starts with: the bench's name, then ``first`` (in
    order), then the machine fields of ``info`` (from :func:`machine_info`)."""
    return {"bench": bench, **first, **{key: info[key] for key in SUMMARY_MACHINE_KEYS}}


def json_number(value: float, digits: int) -> float | None:
    """``value`` rounded for the JSON line; NaN (not measured) becomes null."""
    return None if math.isnan(value) else round(value, digits)


def format_ms(ns: float) -> str:
    """Nanoseconds as milliseconds for a table cell: ``1,234.5 ms``."""
    return f"{ns / 1e6:,.1f} ms"


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def connector_command() -> list[str]:
    """The console script next to this interpreter, else ``python -m connector.cli``."""
    for candidate in (Path(sys.executable).parent / "connector", ROOT / ".venv/bin/connector"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return [str(candidate)]
    return [sys.executable, "-m", "connector.cli"]


@dataclass
class Proc:
    """A product subprocess with its output in ``log_path``."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    """Variables added to this process's environment by :meth:`start` (kept for :meth:`restart`)."""

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self, env: dict[str, str] | None = None) -> None:
        log(f"start {self.name}: {' '.join(self.argv)}")
        self.env = dict(env or {})
        with self.log_path.open("wb") as out:
            self._spawn(out)

    def _spawn(self, out: IO[bytes]) -> None:
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(self.log_path.parent),
            env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # our Ctrl-C does not hit it; we stop it ourselves
        )

    def kill9(self) -> float:
        """SIGKILL the process (no shutdown code runs) and reap it.

        Returns time.monotonic() just before the signal.
        """
        popen = self.popen
        if popen is None or popen.poll() is not None:
            raise BenchError(f"{self.name} is not running before the kill")
        killed_at = time.monotonic()
        popen.send_signal(signal.SIGKILL)
        try:
            popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{self.name} (pid {popen.pid}) survived SIGKILL for 10 s") from None
        return killed_at

    def restart(self, banner: str) -> float:
        """Start the process again as :meth:`start` did (same command line, environment, cwd),
        but append to its log, after a ``===== bench: <banner> =====`` line, instead of
        truncating it (which would lose the output of the earlier runs).

        Logs nothing, so that it can sit in a timed path. Returns time.monotonic() just before
        the spawn.
        """
        with self.log_path.open("ab") as out:
            out.write(f"\n===== bench: {banner} =====\n".encode())
            out.flush()
            started_at = time.monotonic()
            self._spawn(out)
        return started_at

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"

    def describe_death(self) -> str:
        return (
            f"{self.name} (pid {self.pid}) exited with code {self.returncode()}; "
            f"last output ({self.log_path}):\n{indent(self.tail())}"
        )

    def check_alive(self) -> None:
        if self.popen is not None and not self.alive():
            raise BenchError(self.describe_death())

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets but runs no code until :meth:`resume`."""
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(signal.SIGCONT)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL. Safe to call twice."""
        popen = self.popen
        if popen is None or popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(signal.SIGCONT)  # in case it was paused
            popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log(f"{self.name} ignored SIGTERM for {grace:.0f} s; SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=5)


def indent(text: str, prefix: str = "    | ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


@dataclass
class Cluster:
    """A temp dir and the product processes started in it; ``close()`` stops them all.

    As a context manager (``with Cluster.create(...) as cluster:``) it closes on the way out
    and keeps the temp dir with the logs when the block raised (or was cancelled).
    """

    root: Path
    keep: bool = False
    profile_dir: Path | None = None
    """When set, connectors run under cProfile and write ``<name>.prof`` here on exit."""
    procs: list[Proc] = field(default_factory=list)

    @classmethod
    def create(cls, prefix: str, keep: bool = False, profile_dir: Path | None = None) -> Cluster:
        return cls(Path(tempfile.mkdtemp(prefix=prefix)), keep=keep, profile_dir=profile_dir)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.keep = True  # keep the logs of a failed run
        self.close()

    def close(self) -> None:
        for proc in reversed(self.procs):
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the others
                log(f"stopping {proc.name} failed: {exc!r}")
        if self.keep:
            log(f"kept {self.root} (logs: *.log)")
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def check_alive(self) -> None:
        for proc in self.procs:
            proc.check_alive()

    def start_backbone(self, port: int | None = None) -> Backbone:
        port = port or free_port()
        data_dir = self.root / "backbone"
        data_dir.mkdir()
        argv = [
            *connector_command(),
            "backbone",
            "--host",
            HOST,
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
        ]
        proc = Proc("backbone", argv, self.root / "backbone.log")
        self.procs.append(proc)
        proc.start()
        return Backbone(proc=proc, url=f"http://{HOST}:{port}")

    def start_connector(
        self,
        name: str,
        platform_url: str,
        *,
        port: int | None = None,
        long_poll: bool = True,
        max_size: int = 2 << 30,
        extra_toml: str = "",
    ) -> Connector:
        port = port or free_port()
        data_dir = self.root / name
        data_dir.mkdir()
        api_key = f"bench-key-{name}-0123456789"
        config = self.root / f"{name}.toml"
        config.write_text(
            connector_toml(
                data_dir=data_dir,
                port=port,
                platform_url=platform_url,
                api_key=api_key,
                long_poll=long_poll,
                max_size=max_size,
            )
            + extra_toml
        )
        argv = [*connector_command(), "serve", "--config", str(config)]
        if self.profile_dir is not None:
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            out = self.profile_dir / f"connector-{name}.prof"
            argv = [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "connector.cli"]
            argv += ["serve", "--config", str(config)]
        proc = Proc(f"connector-{name}", argv, self.root / f"{name}.log")
        self.procs.append(proc)
        proc.start()
        return Connector(proc=proc, url=f"http://{HOST}:{port}", api_key=api_key)


def connector_toml(
    *,
    data_dir: Path,
    port: int,
    platform_url: str,
    api_key: str,
    long_poll: bool,
    max_size: int,
    sync_interval: float = 5,
    request_timeout: float = 10,
) -> str:
    return f"""\
data_dir = {json.dumps(str(data_dir))}
[server]
host = "{HOST}"
port = {port}
[platform]
url = {json.dumps(platform_url)}
request_timeout = {request_timeout}
[api]
keys = [{{ name = "bench", key = {json.dumps(api_key)}, scopes = ["*"] }}]
[sync]
interval = {sync_interval}
long_poll = {"true" if long_poll else "false"}
[files]
max_size = {max_size}
"""


@dataclass
class Backbone:
    proc: Proc
    url: str

    async def wait_ready(self, session: aiohttp.ClientSession, time_limit: float = 60.0) -> None:
        await wait_http_ok(session, self.proc, [f"{self.url}/v1/health"], time_limit)


@dataclass
class Connector:
    proc: Proc
    url: str
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-KEY": self.api_key}

    async def wait_ready(self, session: aiohttp.ClientSession, time_limit: float = 60.0) -> None:
        await wait_http_ok(session, self.proc, [f"{self.url}/health"], time_limit)

    async def get_json(
        self, session: aiohttp.ClientSession, path: str, time_limit: float = 30.0, **params: str
    ) -> Any:
        async with session.get(
            self.url + path,
            headers=self.headers,
            params=params or None,
            timeout=aiohttp.ClientTimeout(total=time_limit),
        ) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise BenchError(
                    f"GET {path} {params or ''} on {self.proc.name} answered {resp.status}: "
                    f"{body[:2000].decode(errors='replace')}\n{self.proc.tail(30)}"
                )
            return json.loads(body)

    async def address(self, session: aiohttp.ClientSession) -> str:
        identity = await self.get_json(session, "/api/v1/account/identity")
        return str(identity["address"])

    async def total_received(self, session: aiohttp.ClientSession) -> int | None:
        """The sync status's count of messages received so far (None if it has none)."""
        status = await self.get_json(session, "/api/v1/account/sync")
        for key in ("totalReceived", "total_received"):
            if isinstance(status.get(key), int):
                return int(status[key])
        return None

    async def incoming_messages(
        self, session: aiohttp.ClientSession, max_pages: int
    ) -> list[dict[str, Any]]:
        """Every incoming message (GET /api/v1/messages?direction=incoming), pages of 1000
        following ``nextCursor``; more than ``max_pages`` pages is an error (a cursor loop)."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(max_pages):
            params = {"direction": "incoming", "limit": "1000"}
            if cursor:
                params["cursor"] = cursor
            page = await self.get_json(session, "/api/v1/messages", time_limit=120, **params)
            items.extend(page.get("items", []))
            cursor = page.get("nextCursor")
            if not cursor:
                return items
        raise BenchError(f"GET /api/v1/messages did not end after {max_pages} pages (cursor loop?)")


@dataclass
class TwoConnectors:
    """A backbone and connectors A and B on it, all answering /health, with their addresses."""

    backbone: Backbone
    a: Connector
    b: Connector
    address_a: str
    address_b: str

    def cpu_meter(self) -> CpuMeter:
        """A (not yet started) CPU meter over connector A, connector B and the backbone."""
        return CpuMeter(
            {
                "connector A": self.a.proc.pid,
                "connector B": self.b.proc.pid,
                "backbone": self.backbone.proc.pid,
            }
        )


async def start_two_connectors(session: aiohttp.ClientSession, cluster: Cluster) -> TwoConnectors:
    """Start a backbone in ``cluster`` and, once it is healthy, connectors A and B on it (both
    keeping a long-poll open); wait until both are healthy and read their addresses."""
    backbone = cluster.start_backbone()
    await backbone.wait_ready(session)
    a = cluster.start_connector("a", backbone.url, long_poll=True)
    b = cluster.start_connector("b", backbone.url, long_poll=True)
    await a.wait_ready(session)
    await b.wait_ready(session)
    address_a = await a.address(session)
    address_b = await b.address(session)
    return TwoConnectors(backbone, a, b, address_a, address_b)


async def wait_http_ok(
    session: aiohttp.ClientSession, proc: Proc, urls: Sequence[str], time_limit: float
) -> None:
    """Poll ``urls`` until one answers 200; fail early if ``proc`` dies."""
    deadline = time.monotonic() + time_limit
    last = "no answer yet"
    while time.monotonic() < deadline:
        proc.check_alive()
        for url in urls:
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    body = await resp.read()
                    if resp.status == 200:
                        log(f"{proc.name} healthy ({url})")
                        return
                    last = f"{resp.status} {body[:300].decode(errors='replace')}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                last = f"{type(exc).__name__}: {exc}"
        await asyncio.sleep(0.2)
    proc.check_alive()
    raise BenchError(
        f"{proc.name} did not answer 200 on {urls[0]} within {time_limit:.0f} s "
        f"(last: {last}); last output ({proc.log_path}):\n{indent(proc.tail())}"
    )


# --------------------------------------------------------------------------- sending messages


@dataclass
class Sent:
    """One POST /api/v1/messages as the client saw it."""

    seq: int
    status: int  # HTTP status, 0 for a transport error
    start_ns: int  # the clock at the start of the POST
    answer_ns: int  # the clock when the whole answer had arrived (or the transport failed)
    kind: str = ""
    message_id: str | None = None
    error: str | None = None


def message_headers(api_headers: Mapping[str, str], prefer_async: bool = False) -> dict[str, str]:
    """A connector's API key headers plus a JSON content type (and ``Prefer: respond-async``)."""
    headers = {**api_headers, "Content-Type": "application/json"}
    if prefer_async:
        headers["Prefer"] = "respond-async"
    return headers


def message_body(
    recipient: str, run_id: str, kind: str, seq: int, worker: int | None = None
) -> bytes:
    """A small JSON message whose content names the run, the kind of send and its number."""
    content: dict[str, Any] = {"bench": run_id, "kind": kind, "seq": seq}
    if worker is not None:
        content["worker"] = worker
    return json.dumps(
        {"recipients": [recipient], "content": content}, separators=(",", ":")
    ).encode()


SEND_TIMEOUT = aiohttp.ClientTimeout(total=60)


async def post_message(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    body: bytes,
    seq: int,
    *,
    kind: str = "",
    clock: Callable[[], int] = time.time_ns,
    accepted: Sequence[int] = (201, 202),
) -> Sent:
    """One POST of ``body`` to ``url`` (a connector's /api/v1/messages), timed with ``clock``.

    An ``accepted`` status with a message id in the answer is a Sent with ``message_id``; any
    other status, an accepted one without an id, or a transport error (status 0) is a Sent with
    ``error``.
    """
    start = clock()
    try:
        async with session.post(url, data=body, headers=headers, timeout=SEND_TIMEOUT) as resp:
            raw = await resp.read()
            answer = clock()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return Sent(seq, 0, start, clock(), kind, error=f"{type(exc).__name__}: {exc}")
    sent = Sent(seq, status, start, answer, kind)
    if status in accepted:
        try:
            sent.message_id = str(json.loads(raw)["id"])
        except (ValueError, KeyError, TypeError):
            sent.error = f"{status} without a message id: {raw[:300]!r}"
    else:
        sent.error = f"{status}: {raw[:500].decode(errors='replace')}"
    return sent


def print_common_errors(heading: str, failed: Iterable[Sent], top: int = 5) -> None:
    """``heading:`` and the ``top`` most common error texts of ``failed``; nothing if none."""
    kinds = Counter((sent.error or "")[:160] for sent in failed)
    if not kinds:
        return
    print(f"{heading}:")
    for text, count in kinds.most_common(top):
        print(f"  {count:>6} x {text}")


def print_send_errors(errors: Iterable[Sent], warm_errors: Iterable[Sent] = ()) -> None:
    """Below a table: the most common errors of the warm-up sends, then of the timed sends."""
    print_common_errors("warm-up send errors", warm_errors)
    print_common_errors("send errors (most common first)", errors)


# --------------------------------------------------------------------------- memory


def proc_status_kib(pid: int, key: str) -> int | None:
    """``VmRSS``/``VmHWM``... from ``/proc/<pid>/status`` in KiB (None if unreadable)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class RssSampler:
    """Samples a process's VmRSS every ``interval`` seconds while running.

    Peak growth = the peak during sampling minus VmRSS when sampling began. The peak is the
    larger of the sampled maximum and VmHWM at the end when VmHWM rose during sampling (a
    high-water mark reached before sampling began cannot be attributed to the transfer).
    """

    pid: int
    interval: float = 0.05
    rss_before_kib: int = 0
    hwm_before_kib: int = 0
    hwm_after_kib: int = 0
    sampled_peak_kib: int = 0
    samples: int = 0
    _task: asyncio.Task[None] | None = None
    _marks: dict[str, int] = field(default_factory=dict)
    _phase_peak: int = 0

    def start(self) -> None:
        self.rss_before_kib = proc_status_kib(self.pid, "VmRSS") or 0
        self.hwm_before_kib = proc_status_kib(self.pid, "VmHWM") or 0
        self.sampled_peak_kib = self.rss_before_kib
        self._phase_peak = self.rss_before_kib
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            rss = proc_status_kib(self.pid, "VmRSS")
            if rss is None:
                return
            self.samples += 1
            self.sampled_peak_kib = max(self.sampled_peak_kib, rss)
            self._phase_peak = max(self._phase_peak, rss)
            await asyncio.sleep(self.interval)

    def mark_phase(self, name: str) -> int:
        """The sampled peak since the previous mark (KiB growth over rss_before)."""
        rss = proc_status_kib(self.pid, "VmRSS") or 0
        peak = max(self._phase_peak, rss)
        self._marks[name] = peak - self.rss_before_kib
        self._phase_peak = rss
        return self._marks[name]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        rss = proc_status_kib(self.pid, "VmRSS")
        if rss is not None:
            self.sampled_peak_kib = max(self.sampled_peak_kib, rss)
        self.hwm_after_kib = proc_status_kib(self.pid, "VmHWM") or 0

    @property
    def peak_kib(self) -> int:
        if self.hwm_after_kib > self.hwm_before_kib:
            return max(self.hwm_after_kib, self.sampled_peak_kib)
        return self.sampled_peak_kib

    @property
    def growth_mib(self) -> float:
        return (self.peak_kib - self.rss_before_kib) / 1024

    @property
    def phases_mib(self) -> dict[str, float]:
        return {k: v / 1024 for k, v in self._marks.items()}


def cpu_times(pid: int | None = None) -> tuple[float, float]:
    """(user, system) CPU seconds used so far by ``pid`` (None: this process), or NaNs."""
    if pid is None:
        times = os.times()
        return times.user, times.system
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick
    except (OSError, ValueError, IndexError):
        return float("nan"), float("nan")


@dataclass
class CpuMeter:
    """CPU seconds used by some processes (and this one) between ``start()`` and ``stop()``."""

    pids: dict[str, int]
    used: dict[str, float] = field(default_factory=dict)
    system: dict[str, float] = field(default_factory=dict)
    _start: dict[str, tuple[float, float]] = field(default_factory=dict)

    def _now(self) -> dict[str, tuple[float, float]]:
        now = {name: cpu_times(pid) for name, pid in self.pids.items()}
        now["bench client"] = cpu_times()
        return now

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> dict[str, float]:
        now = self._now()
        self.used = {
            name: (now[name][0] - self._start[name][0]) + (now[name][1] - self._start[name][1])
            for name in now
        }
        self.system = {name: now[name][1] - self._start[name][1] for name in now}
        return self.used

    def summary(self) -> dict[str, float]:
        """CPU seconds per process, rounded for the JSON line."""
        return {name: round(sec, 2) for name, sec in self.used.items()}

    def rows(self, wall: float) -> list[Row]:
        return [
            Row(
                f"CPU {name}",
                f"{sec:.2f} s ({sec / wall:.0%} of a core, {self.system[name]:.2f} s sys)"
                if wall > 0
                else "",
            )
            for name, sec in self.used.items()
        ]


# --------------------------------------------------------------------------- misc


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    """``with timed() as t: ...`` then ``t[0]`` is the elapsed seconds."""
    out = [0.0]
    start = time.perf_counter()
    try:
        yield out
    finally:
        out[0] = time.perf_counter() - start


def mb_per_s(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6 if seconds > 0 else float("inf")


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (p in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(p / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def client_session(limit: int = 100) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        auto_decompress=False,
    )


def run_main(coro_factory: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run the async main; print a BenchError clearly and return the exit code.

    SIGTERM and SIGINT cancel the main task, so its ``finally`` stops the product processes
    (also when the shell started the bench in the background with SIGINT ignored).
    """

    async def guarded() -> int:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        return await coro_factory()

    try:
        return int(asyncio.run(guarded()))
    except BenchError as exc:
        print(f"\nBENCH FAILED: {exc}", file=sys.stderr, flush=True)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted; the product processes were stopped", file=sys.stderr)
        return 130
