"""Replicas benchmark: two replicas of one identity against one, on one PostgreSQL database.

A backbone, the sender identity A (replicas a1, a2) and the receiver identity B (replicas b1,
b2), each identity on its own fresh PostgreSQL database (created here, dropped at the end),
the replicas of one identity sharing the database URL, the API key and the master key. Phases
alternate between the layouts

- ``one``: a1 and b1 running (a2 and b2 stopped with SIGTERM),
- ``two``: a1, a2, b1 and b2 running,

``--rounds`` times (one/two, then two/one, ...). In a phase:

1. B's replicas are paused (SIGSTOP) and ``--concurrency`` clients POST ``--count`` small JSON
   messages A -> B with ``Prefer: respond-async``, spread over A's running replicas round-robin
   per request, as a load balancer without sticky sessions would: accepted (202) answers/s;
2. once A's outbox table is empty (everything is at the backbone), B's replicas resume and
   ingest that backlog: ingest/s at B = messages / (last - first ``received_at``), read from
   B's database; every accepted message must arrive once (the count is checked).

Throughout, ``pg_stat_activity`` (``wait_event_type = 'Lock'``) and ``pg_locks`` (not granted)
of the two databases are sampled every 50 ms: max and mean per step, and which lock types were
waited on. CPU per message of every process (replicas, backbone, the PostgreSQL backends of
the database, this client) is read from /proc. A bare aiohttp JSON POST handler
(``bench/messages.py``'s) is measured with the same client in the same run, in one process and
in two (spread the same way), so the figures are also ratios.

    python bench/replicas.py                 # 4,000 messages per phase, 2 rounds, 32 clients
    python bench/replicas.py --quick         # 500 per phase, 1 round
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import secrets
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    HOST,
    BenchError,
    Cluster,
    Connector,
    CpuMeter,
    Proc,
    Row,
    Sent,
    check,
    client_session,
    connector_command,
    connector_toml,
    cpu_times,
    free_port,
    header_line,
    json_number,
    log,
    machine_info,
    message_body,
    message_headers,
    percentile,
    post_message,
    print_send_errors,
    print_summary,
    print_table,
    run_main,
    summary_head,
)
from messages import _BARE_SERVER  # the same bare handler as bench/messages.py's ratio

from connector.crypto.at_rest import MASTER_KEY_FILENAME
from scheduler.leases import instance_id

ADMIN_DSN = os.environ.get("CONNECTOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
TARGET_RATIO = 0.9  # two replicas / one, accepted/s and ingest/s
LAYOUTS = {"one": ("a1", "b1"), "two": ("a1", "a2", "b1", "b2")}
LOCK_SAMPLE_EVERY = 0.05


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def fmt_load(load: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in load)


# --------------------------------------------------------------------------- PostgreSQL


@contextlib.asynccontextmanager
async def fresh_databases(names: Sequence[str]) -> AsyncIterator[dict[str, str]]:
    """New databases ``bench_replicas_<hex>_<name>``: {name: SQLAlchemy URL}; dropped after."""
    try:
        admin = await asyncpg.connect(ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        raise BenchError(f"PostgreSQL is not reachable at {ADMIN_DSN}: {exc}") from exc
    token = secrets.token_hex(4)
    made = {name: f"bench_replicas_{token}_{name}" for name in names}
    base = ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        for db in made.values():
            await admin.execute(f'CREATE DATABASE "{db}"')
        yield {name: f"{base}/{db}" for name, db in made.items()}
    finally:
        for db in made.values():
            await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()


def plain_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


@dataclass
class LockStats:
    """Samples of lock waits in some databases: per sample, backends waiting on a heavyweight
    lock (pg_stat_activity) and lock requests not granted (pg_locks)."""

    waiting: list[int] = field(default_factory=list)
    not_granted: list[int] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)  # "locktype mode" seen not granted
    active: list[int] = field(default_factory=list)  # backends running a query

    def text(self) -> str:
        if not self.waiting:
            return "-"
        return (
            f"waiting max {max(self.waiting)} mean {statistics.fmean(self.waiting):.2f}; "
            f"not granted max {max(self.not_granted)} "
            f"mean {statistics.fmean(self.not_granted):.2f} "
            f"({len(self.waiting)} samples; active backends max {max(self.active)})"
        )

    def summary(self) -> dict[str, Any]:
        if not self.waiting:
            return {}
        return {
            "samples": len(self.waiting),
            "lockWaitMax": max(self.waiting),
            "lockWaitMean": round(statistics.fmean(self.waiting), 3),
            "notGrantedMax": max(self.not_granted),
            "notGrantedMean": round(statistics.fmean(self.not_granted), 3),
            "activeMax": max(self.active),
            "kinds": dict(self.kinds.most_common(5)),
        }


class LockSampler:
    """Every 50 ms, lock waits of the backends connected to ``database``, read on ``admin``
    (a connection used by nothing else while sampling)."""

    def __init__(self, admin: asyncpg.Connection, database: str) -> None:
        self.admin = admin
        self.database = database
        self.stats = LockStats()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.stats = LockStats()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            row = await self.admin.fetchrow(
                "SELECT count(*) FILTER (WHERE wait_event_type = 'Lock') AS waiting,"
                " count(*) FILTER (WHERE state = 'active') AS active"
                " FROM pg_stat_activity WHERE datname = $1",
                self.database,
            )
            locks = await self.admin.fetch(
                "SELECT l.locktype || ' ' || l.mode AS kind FROM pg_locks l"
                " JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE NOT l.granted AND a.datname = $1",
                self.database,
            )
            self.stats.waiting.append(int(row["waiting"]))
            self.stats.active.append(int(row["active"]))
            self.stats.not_granted.append(len(locks))
            self.stats.kinds.update(r["kind"] for r in locks)
            await asyncio.sleep(LOCK_SAMPLE_EVERY)

    async def stop(self) -> LockStats:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        return self.stats


async def backend_pids(admin: asyncpg.Connection, database: str) -> list[int]:
    rows = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", database)
    return [int(r["pid"]) for r in rows]


# --------------------------------------------------------------------------- the cluster


@dataclass
class Identity:
    """One identity's replicas (all configured; some running), its database and API key."""

    name: str
    database_url: str
    api_key: str
    replicas: dict[str, Connector] = field(default_factory=dict)
    address: str = ""

    def running(self) -> list[Connector]:
        return [c for c in self.replicas.values() if c.proc.alive()]


def add_replica(cluster: Cluster, identity: Identity, name: str, backbone_url: str) -> Connector:
    """Write ``name``'s config (shared database URL and API key) and data dir; not started."""
    port = free_port()
    data_dir = cluster.root / name
    data_dir.mkdir()
    config = cluster.root / f"{name}.toml"
    config.write_text(
        connector_toml(
            data_dir=data_dir,
            port=port,
            platform_url=backbone_url,
            api_key=identity.api_key,
            long_poll=True,
            max_size=1 << 20,
        )
        + f"[database]\nurl = {json.dumps(identity.database_url)}\n"
    )
    argv = [*connector_command(), "serve", "--config", str(config)]
    proc = Proc(f"connector-{name}", argv, cluster.root / f"{name}.log")
    cluster.procs.append(proc)
    connector = Connector(proc=proc, url=f"http://{HOST}:{port}", api_key=identity.api_key)
    identity.replicas[name] = connector
    return connector


async def start_identity(
    session: aiohttp.ClientSession, cluster: Cluster, identity: Identity, backbone_url: str
) -> None:
    """Start the first replica, copy its master key to the second, start that one."""
    first = add_replica(cluster, identity, f"{identity.name}1", backbone_url)
    second = add_replica(cluster, identity, f"{identity.name}2", backbone_url)
    first.proc.start()
    await first.wait_ready(session)
    key = cluster.root / f"{identity.name}1" / MASTER_KEY_FILENAME
    target = cluster.root / f"{identity.name}2" / MASTER_KEY_FILENAME
    target.write_bytes(key.read_bytes())
    target.chmod(0o600)
    second.proc.start()
    await second.wait_ready(session)
    addresses = {await c.address(session) for c in (first, second)}
    if len(addresses) != 1:
        raise BenchError(f"replicas of {identity.name} have different addresses: {addresses}")
    identity.address = addresses.pop()


async def set_layout(
    session: aiohttp.ClientSession, identities: Sequence[Identity], layout: str
) -> None:
    """Stop the replicas the layout leaves out (SIGTERM), start again those it needs."""
    wanted = set(LAYOUTS[layout])
    for identity in identities:
        for name, replica in identity.replicas.items():
            if name not in wanted and replica.proc.alive():
                log(f"stop {replica.proc.name}")
                replica.proc.stop()
    for identity in identities:
        for name, replica in identity.replicas.items():
            if name in wanted and not replica.proc.alive():
                log(f"start {replica.proc.name} again")
                replica.proc.restart(f"layout {layout}")
                await replica.wait_ready(session)


# --------------------------------------------------------------------------- sending


@dataclass
class Target:
    url: str
    headers: dict[str, str]


async def send_spread(
    session: aiohttp.ClientSession,
    targets: Sequence[Target],
    recipient: str,
    run_id: str,
    kind: str,
    count: int,
    concurrency: int,
) -> tuple[list[Sent], float]:
    """POST ``count`` respond-async messages from ``concurrency`` tasks, request ``seq`` to
    ``targets[seq % len(targets)]``. Returns (the answers, first request to last answer, s)."""
    todo = iter(range(count))
    results: list[Sent] = []
    prepared = [
        (f"{t.url}/api/v1/messages", message_headers(t.headers, prefer_async=True)) for t in targets
    ]

    async def sender(worker: int) -> None:
        for seq in todo:
            url, headers = prepared[seq % len(prepared)]
            body = message_body(recipient, run_id, kind, seq, worker)
            results.append(await post_message(session, url, headers, body, seq))

    start_ns = time.time_ns()
    await asyncio.gather(*(sender(i) for i in range(concurrency)))
    end_ns = max((r.answer_ns for r in results), default=time.time_ns())
    return results, (end_ns - start_ns) / 1e9


@contextlib.asynccontextmanager
async def bare_servers(count: int) -> AsyncIterator[list[Target]]:
    """``count`` bare aiohttp JSON handlers, each its own process."""
    processes = []
    targets = []
    try:
        for _ in range(count):
            port = free_port()
            processes.append(
                await asyncio.create_subprocess_exec(sys.executable, "-c", _BARE_SERVER, str(port))
            )
            targets.append(Target(f"http://{HOST}:{port}", {}))
        for target in targets:
            port = int(target.url.rsplit(":", 1)[1])
            deadline = time.monotonic() + 30
            while True:
                try:
                    _, writer = await asyncio.open_connection(HOST, port)
                    writer.close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise BenchError("a bare aiohttp server did not start") from None
                    await asyncio.sleep(0.1)
        yield targets
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            await process.wait()


async def bare_rate(
    session: aiohttp.ClientSession, args: argparse.Namespace, recipient: str, processes: int
) -> float:
    """Answers/s of the bare handler in ``processes`` processes (spread round-robin)."""
    async with bare_servers(processes) as targets:
        await send_spread(session, targets, recipient, "bare", "warm", 200, args.concurrency)
        results, seconds = await send_spread(
            session, targets, recipient, "bare", "bare", args.count, args.concurrency
        )
    ok = sum(1 for r in results if r.status == 202)
    rate = ok / seconds if seconds > 0 else math.nan
    log(f"bare aiohttp, {processes} process(es): {rate:,.0f} /s")
    return rate


# --------------------------------------------------------------------------- one phase


@dataclass
class Phase:
    layout: str
    round: int
    load: tuple[float, float, float]
    bare: float = math.nan  # the bare handler, one process, just before this phase
    count: int = 0
    accepted: int = 0
    errors: list[Sent] = field(default_factory=list)
    send_seconds: float = math.nan
    accept_p50_ms: float = math.nan
    accept_p99_ms: float = math.nan
    per_replica: dict[str, int] = field(default_factory=dict)
    outbox_seconds: float = math.nan  # first request -> A's outbox empty
    received: int = 0
    ingest_span: float = math.nan  # first received_at -> all seen stored
    received_span: float = math.nan  # first -> last received_at (page starts)
    ingest_wait: float = math.nan  # resume -> last arrival
    lease_holder: str = "-"
    locks_a: LockStats = field(default_factory=LockStats)
    locks_b: LockStats = field(default_factory=LockStats)
    cpu_send: dict[str, float] = field(default_factory=dict)
    cpu_ingest: dict[str, float] = field(default_factory=dict)

    @property
    def accept_rate(self) -> float:
        return self.accepted / self.send_seconds if self.send_seconds > 0 else math.nan

    @property
    def outbox_rate(self) -> float:
        return self.accepted / self.outbox_seconds if self.outbox_seconds > 0 else math.nan

    @property
    def ingest_rate(self) -> float:
        return self.received / self.ingest_span if self.ingest_span > 0 else math.nan


def process_pids(identities: Sequence[Identity], backbone: Proc) -> dict[str, int]:
    pids = {
        name: c.proc.pid for i in identities for name, c in i.replicas.items() if c.proc.alive()
    }
    pids["backbone"] = backbone.pid
    return pids


class PgCpu:
    """CPU seconds of the PostgreSQL backends of one database between start() and stop()
    (backends that end in between are not counted: the pools keep theirs open)."""

    def __init__(self, admin: asyncpg.Connection, database: str) -> None:
        self.admin = admin
        self.database = database
        self._start: dict[int, float] = {}

    @staticmethod
    def _cpu(pid: int) -> float:
        user, system = cpu_times(pid)
        return user + system

    async def start(self) -> None:
        self._start = {pid: self._cpu(pid) for pid in await backend_pids(self.admin, self.database)}

    async def stop(self) -> float:
        used = 0.0
        for pid in await backend_pids(self.admin, self.database):
            now = self._cpu(pid)
            if not math.isnan(now):
                used += now - self._start.get(pid, 0.0)
        return used


async def count_outbox(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM outbox"))


def check_alive(procs: Sequence[Proc]) -> None:
    """Fail with the log tail of one of ``procs`` that died (a stopped replica is not checked)."""
    for proc in procs:
        proc.check_alive()


async def wait_until(
    what: str, probe: Any, procs: Sequence[Proc], *, stall: float, poll: float = 0.05
) -> float:
    """Poll ``probe()`` (-> remaining work) until 0; fail after ``stall`` s without progress.
    Returns time.time_ns() of the reading that was 0."""
    lowest, last_progress = None, time.monotonic()
    while True:
        check_alive(procs)
        left = await probe()
        if left <= 0:
            return time.time_ns()
        if lowest is None or left < lowest:
            lowest, last_progress = left, time.monotonic()
        if time.monotonic() - last_progress > stall:
            raise BenchError(f"{what}: stuck at {left} for {stall:.0f} s")
        await asyncio.sleep(poll)


async def run_phase(
    session: aiohttp.ClientSession,
    args: argparse.Namespace,
    a: Identity,
    b: Identity,
    backbone: Proc,
    admin: asyncpg.Connection,
    sampling: asyncpg.Connection,
    dbs: dict[str, asyncpg.Connection],
    layout: str,
    round_no: int,
    run_id: str,
) -> Phase:
    await set_layout(session, (a, b), layout)
    procs = [backbone, *(c.proc for c in (*a.running(), *b.running()))]
    phase = Phase(layout, round_no, load_average(), count=args.count)
    phase.bare = await bare_rate(session, args, b.address, 1)
    kind = f"{layout}-{round_no}"
    db_a, db_b = database_name(a.database_url), database_name(b.database_url)
    seq_before = int(
        await dbs["b"].fetchval(
            "SELECT coalesce(max(seq), 0) FROM messages WHERE direction = 'incoming'"
        )
    )
    senders = a.running()
    targets = [Target(c.url, c.headers) for c in senders]
    # Warm the replicas' pools and caches (untimed); B takes these too before the pause.
    await send_spread(session, targets, b.address, run_id, f"warm-{kind}", 64, args.concurrency)
    await wait_until("A's outbox (warm-up)", lambda: count_outbox(dbs["a"]), procs, stall=60)
    warm_seen = seq_before

    async def b_warm_left() -> int:
        got = await dbs["b"].fetchval(
            "SELECT count(*) FROM messages WHERE direction = 'incoming' AND seq > $1", warm_seen
        )
        return 64 - int(got)

    await wait_until("B (warm-up)", b_warm_left, procs, stall=60)
    seq_before = int(
        await dbs["b"].fetchval(
            "SELECT coalesce(max(seq), 0) FROM messages WHERE direction = 'incoming'"
        )
    )

    # 1. Send to A, B paused.
    for replica in b.running():
        replica.proc.pause()
    meter = CpuMeter(process_pids((a,), backbone))
    pg_a = PgCpu(admin, db_a)
    locks_a = LockSampler(sampling, db_a)
    await pg_a.start()
    meter.start()
    locks_a.start()
    log(f"round {round_no}, {layout}: {args.count} respond-async sends over {len(targets)} of A")
    results, phase.send_seconds = await send_spread(
        session, targets, b.address, run_id, kind, args.count, args.concurrency
    )
    start_ns = min((r.start_ns for r in results), default=time.time_ns())
    end_outbox_ns = await wait_until(
        "A's outbox", lambda: count_outbox(dbs["a"]), procs, stall=args.stall_timeout
    )
    phase.cpu_send = meter.stop()
    phase.cpu_send["postgres (A's db)"] = await pg_a.stop()
    phase.locks_a = await locks_a.stop()
    phase.outbox_seconds = (end_outbox_ns - start_ns) / 1e9
    ok = [r for r in results if r.status == 202]
    phase.errors = [r for r in results if r.status != 202]
    phase.accepted = len(ok)
    latencies = sorted(r.answer_ns - r.start_ns for r in ok)
    phase.accept_p50_ms = percentile(latencies, 50) / 1e6
    phase.accept_p99_ms = percentile(latencies, 99) / 1e6
    by_url = Counter(r.seq % len(targets) for r in ok)
    phase.per_replica = {senders[i].proc.name: by_url[i] for i in range(len(targets))}

    # 2. B resumes and ingests the backlog.
    meter_b = CpuMeter(process_pids((b,), backbone))
    pg_b = PgCpu(admin, db_b)
    locks_b = LockSampler(sampling, db_b)
    await pg_b.start()
    meter_b.start()
    locks_b.start()
    resumed_ns = time.time_ns()
    for replica in b.running():
        replica.proc.resume()

    async def b_left() -> int:
        got = await dbs["b"].fetchval(
            "SELECT count(*) FROM messages WHERE direction = 'incoming' AND seq > $1",
            seq_before,
        )
        return phase.accepted - int(got)

    last_ns = await wait_until("B's ingest", b_left, procs, stall=args.stall_timeout)
    phase.cpu_ingest = meter_b.stop()
    phase.cpu_ingest["postgres (B's db)"] = await pg_b.stop()
    phase.locks_b = await locks_b.stop()
    row = await dbs["b"].fetchrow(
        "SELECT count(*) AS n, min(received_at) AS first, max(received_at) AS last"
        " FROM messages WHERE direction = 'incoming' AND seq > $1",
        seq_before,
    )
    phase.received = int(row["n"])
    if row["first"] is not None:
        # received_at is taken when B starts ingesting a page (one value per page), so the
        # span runs from the first page's start to when the last page was seen stored.
        first = row["first"].replace(tzinfo=row["first"].tzinfo or dt.UTC)
        phase.received_span = (row["last"] - row["first"]).total_seconds()
        phase.ingest_span = last_ns / 1e9 - first.timestamp()
    phase.ingest_wait = (last_ns - resumed_ns) / 1e9
    instance = await dbs["b"].fetchval("SELECT instance FROM leases WHERE name = 'inbox'")
    names = {instance_id(Path(c.proc.log_path.parent / n)): n for n, c in b.replicas.items()}
    phase.lease_holder = names.get(str(instance), str(instance))
    log(
        f"round {round_no}, {layout}: accepted {phase.accept_rate:,.0f}/s, outbox "
        f"{phase.outbox_rate:,.0f}/s, B ingest {phase.ingest_rate:,.0f}/s "
        f"(load {fmt_load(load_average())})"
    )
    return phase


# --------------------------------------------------------------------------- output


def per_message_ms(cpu: dict[str, float], n: int) -> str:
    if n <= 0:
        return "-"
    return ", ".join(f"{name} {sec / n * 1e3:.2f}" for name, sec in cpu.items())


def mean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.fmean(kept) if kept else math.nan


def report(
    args: argparse.Namespace,
    info: dict[str, Any],
    phases: list[Phase],
    bare: dict[str, float],
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> int:
    cores = info["cores"]
    noisy = max(load_before[0], load_after[0], *(p.load[0] for p in phases)) > cores
    by = {layout: [p for p in phases if p.layout == layout] for layout in LAYOUTS}
    accept = {k: mean([p.accept_rate for p in v]) for k, v in by.items()}
    ingest = {k: mean([p.ingest_rate for p in v]) for k, v in by.items()}
    outbox = {k: mean([p.outbox_rate for p in v]) for k, v in by.items()}
    accept_ratio = accept["two"] / accept["one"]
    # Of the bare handler measured just before each phase: corrects for the box's load.
    of_bare = {k: mean([p.accept_rate / p.bare for p in v]) for k, v in by.items()}
    paired = [
        (two.accept_rate / one.accept_rate, two.ingest_rate / one.ingest_rate)
        for r in range(1, args.rounds + 1)
        for one in by["one"]
        for two in by["two"]
        if one.round == two.round == r
    ]
    ingest_ratio = ingest["two"] / ingest["one"]
    bare_one = bare.get("one", math.nan)
    rows = [
        Row(
            "load average before / after (1, 5, 15 min)",
            f"{fmt_load(load_before)}  |  {fmt_load(load_after)}",
            "",
            "NOISY" if noisy else "",
        ),
        Row(
            "messages per phase / clients / rounds",
            f"{args.count:,} / {args.concurrency} / {args.rounds}",
        ),
        Row(
            "bare aiohttp handler, 1 process / 2 processes",
            f"{bare_one:,.0f} /s / {bare.get('two', math.nan):,.0f} /s",
        ),
    ]
    for p in phases:
        tag = f"r{p.round} {p.layout}"
        rows += [
            Row(
                f"{tag}: load at start", fmt_load(p.load), "", "NOISY" if p.load[0] > cores else ""
            ),
            Row(
                f"{tag}: accepted/s (202) [p50 / p99]",
                f"{p.accept_rate:,.0f} /s "
                f"[{p.accept_p50_ms:.1f} / {p.accept_p99_ms:.1f} ms], "
                f"{p.accept_rate / p.bare:.1%} of bare ({p.bare:,.0f} /s just before)",
            ),
            Row(
                f"{tag}: accepted per replica",
                ", ".join(f"{k} {v}" for k, v in p.per_replica.items()),
            ),
            Row(
                f"{tag}: A's outbox handed all to the backbone",
                f"{p.outbox_rate:,.0f} /s ({p.outbox_seconds:.2f} s from the first request)",
            ),
            Row(
                f"{tag}: B ingest/s (backlog: first received_at -> all stored)",
                f"{p.ingest_rate:,.0f} /s "
                f"({p.received:,} of {p.accepted:,}; all in {p.ingest_wait:.2f} s from resume; "
                f"received_at span {p.received_span:.2f} s; inbox lease: {p.lease_holder})",
            ),
            Row(f"{tag}: lock waits, A's db (send + outbox)", p.locks_a.text()),
            Row(f"{tag}: lock waits, B's db (ingest)", p.locks_b.text()),
            Row(
                f"{tag}: CPU ms per message, send + outbox",
                per_message_ms(p.cpu_send, p.accepted),
            ),
            Row(f"{tag}: CPU ms per message, ingest", per_message_ms(p.cpu_ingest, p.received)),
        ]
    rows += [
        Row(
            "accepted/s: one / two replicas of A (mean)",
            f"{accept['one']:,.0f} / {accept['two']:,.0f} /s",
        ),
        Row(
            "  -> two / one",
            f"{accept_ratio:.2f}x",
            f">= {TARGET_RATIO}x",
            check(accept_ratio >= TARGET_RATIO),
        ),
        Row(
            "  -> two / one per round (accepted; ingest)",
            ", ".join(f"{x:.2f}x; {y:.2f}x" for x, y in paired),
        ),
        Row(
            "  -> each of its phase's bare handler (one / two)",
            f"{of_bare['one']:.1%} / {of_bare['two']:.1%} "
            f"(two / one: {of_bare['two'] / of_bare['one']:.2f}x)",
        ),
        Row(
            "  -> of the first bare handler (one / two)",
            f"{accept['one'] / bare_one:.1%} / {accept['two'] / bare_one:.1%}",
        ),
        Row(
            "A's outbox/s: one / two replicas (mean)",
            f"{outbox['one']:,.0f} / "
            f"{outbox['two']:,.0f} /s ({outbox['two'] / outbox['one']:.2f}x)",
        ),
        Row(
            "B ingest/s: one / two replicas of B (mean)",
            f"{ingest['one']:,.0f} / {ingest['two']:,.0f} /s",
        ),
        Row(
            "  -> two / one",
            f"{ingest_ratio:.2f}x",
            f">= {TARGET_RATIO}x",
            check(ingest_ratio >= TARGET_RATIO),
        ),
    ]
    print_table(
        f"bench/replicas.py — respond-async sends A -> B on PostgreSQL, one vs two replicas "
        f"of each identity ({args.count:,} per phase)",
        rows,
    )
    for p in phases:
        if p.errors:
            print_send_errors(p.errors)
    lost = [p for p in phases if p.received != p.accepted]
    errors = sum(len(p.errors) for p in phases)
    met = {"acceptRatio": accept_ratio >= TARGET_RATIO, "ingestRatio": ingest_ratio >= TARGET_RATIO}
    print_summary(
        {
            **summary_head("replicas", info),
            "count": args.count,
            "concurrency": args.concurrency,
            "rounds": args.rounds,
            "loadBefore": [round(x, 2) for x in load_before],
            "loadAfter": [round(x, 2) for x in load_after],
            "noisy": noisy,
            "bareAiohttpPerS": {k: json_number(v, 1) for k, v in bare.items()},
            "acceptedPerS": {k: json_number(v, 1) for k, v in accept.items()},
            "outboxPerS": {k: json_number(v, 1) for k, v in outbox.items()},
            "ingestPerS": {k: json_number(v, 1) for k, v in ingest.items()},
            "acceptRatio": json_number(accept_ratio, 3),
            "acceptOfBare": {k: json_number(v, 3) for k, v in of_bare.items()},
            "pairedRatios": [[round(x, 3), round(y, 3)] for x, y in paired],
            "ingestRatio": json_number(ingest_ratio, 3),
            "phases": [
                {
                    "round": p.round,
                    "layout": p.layout,
                    "load": [round(x, 2) for x in p.load],
                    "acceptedPerS": json_number(p.accept_rate, 1),
                    "bareAiohttpPerS": json_number(p.bare, 1),
                    "outboxPerS": json_number(p.outbox_rate, 1),
                    "ingestPerS": json_number(p.ingest_rate, 1),
                    "locksA": p.locks_a.summary(),
                    "locksB": p.locks_b.summary(),
                    "cpuSend": {k: round(v, 2) for k, v in p.cpu_send.items()},
                    "cpuIngest": {k: round(v, 2) for k, v in p.cpu_ingest.items()},
                }
                for p in phases
            ],
            "errors": errors,
            "lost": len(lost),
            "targetsMet": met,
        }
    )
    if errors or lost:
        return 1
    return 1 if args.strict and not all(met.values()) else 0


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=4000, help="messages per phase (4,000)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients (32)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of one + two (2)")
    parser.add_argument("--quick", action="store_true", help="500 per phase, 1 round")
    parser.add_argument(
        "--stall-timeout", type=float, default=60.0, help="give up after this long w/o progress"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and logs")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.quick:
        args.count, args.rounds = min(args.count, 500), 1
    if min(args.count, args.concurrency, args.rounds) <= 0:
        parser.error("--count, --concurrency and --rounds must be positive")
    return args


async def main(args: argparse.Namespace) -> int:
    info = machine_info()
    print(header_line(info), flush=True)
    load_before = load_average()
    print(f"# load average (1, 5, 15 min): {fmt_load(load_before)}", flush=True)
    run_id = os.urandom(6).hex()
    phases: list[Phase] = []
    async with fresh_databases(("a", "b")) as urls:
        with Cluster.create("bench-replicas-", keep=args.keep) as cluster:
            async with client_session(limit=args.concurrency + 8) as session:
                backbone = cluster.start_backbone()
                await backbone.wait_ready(session)
                a = Identity("a", urls["a"], f"bench-key-a-{secrets.token_hex(8)}")
                b = Identity("b", urls["b"], f"bench-key-b-{secrets.token_hex(8)}")
                await start_identity(session, cluster, a, backbone.url)
                await start_identity(session, cluster, b, backbone.url)
                log(f"A = {a.address}, B = {b.address}, run {run_id}")
                bare = {
                    "one": await bare_rate(session, args, b.address, 1),
                    "two": await bare_rate(session, args, b.address, 2),
                }
                admin = await asyncpg.connect(ADMIN_DSN)
                sampling = await asyncpg.connect(ADMIN_DSN)
                dbs = {
                    "a": await asyncpg.connect(plain_dsn(a.database_url)),
                    "b": await asyncpg.connect(plain_dsn(b.database_url)),
                }
                try:
                    for round_no in range(1, args.rounds + 1):
                        order = ("one", "two") if round_no % 2 else ("two", "one")
                        for layout in order:
                            phases.append(
                                await run_phase(
                                    session,
                                    args,
                                    a,
                                    b,
                                    backbone.proc,
                                    admin,
                                    sampling,
                                    dbs,
                                    layout,
                                    round_no,
                                    run_id,
                                )
                            )
                finally:
                    for conn in (admin, sampling, *dbs.values()):
                        await conn.close()
    return report(args, info, phases, bare, load_before, load_average())


if __name__ == "__main__":
    arguments = parse_args()
    sys.exit(run_main(lambda: main(arguments)))
