"""Crash recovery: seconds from ``kill -9`` of a connector until it serves again (``/health`` 200).

The issue's figure: "after ``kill -9`` the connector serves again within 2 s". Starts a backbone
and two connectors A and B (separate processes, 127.0.0.1, temp dirs, as bench/_harness.py starts
them), sends a few warm-up messages A -> B, then runs ``--trials`` kills of B in each of two modes:

- idle:  nothing is sent; B only holds its long-poll open to the backbone.
- load:  ``--concurrency`` senders POST messages A -> B without pause during all load trials,
         so B is killed mid-sync with messages waiting for it at the backbone, and comes back
         to a backlog that grew while it was down. Each kill comes 0.5..1.5 s after the
         previous recovery (spread over the trials).

Each trial sends SIGKILL to B's process (no shutdown code runs), reaps it, starts it again at
once with the same command line, environment, config and data dir, and polls ``GET /health``
every 10 ms (new connection each time, 2 s per-request limit) until it answers 200. /health is
200 only when B's database, the platform and the scheduler are fine. Per trial:

- kill -> 200    from just before the SIGKILL to the arrival of the first 200 answer
- start -> 200   from just before the new process is spawned (so without the kill and reap)
- start -> answer  to the first HTTP answer of any status (the port is open: imports, config,
                 migrations and app start-up are done)

In load mode it also reads how many messages wait for B at the backbone (its SQLite inbox, read
only) right after the kill and at the 200. After the last trial the load stops and the bench waits
until B holds every message A accepted (201/202), then lists B's incoming messages (GET
/api/v1/messages?direction=incoming, following nextCursor) and checks that each arrived exactly
once by run id and sequence number in the content, and by the message id A answered.

The bench client, the backbone and both connectors share the machine's cores; under load the
figure includes that contention. All times are seconds (the JSON line too).

    python bench/recovery.py                     # 10 trials idle, 10 under load (8 senders)
    python bench/recovery.py --trials 20 --concurrency 16
    python bench/recovery.py --prefer-async      # the load sends with Prefer: respond-async
    python bench/recovery.py --quick             # 3 + 3 trials, well under a minute

Exit codes: 0 measured (``--strict``: 1 when a target is missed), 1 messages lost or duplicated,
2 the bench could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    BenchError,
    Cluster,
    Connector,
    Proc,
    Row,
    Sent,
    check,
    client_session,
    header_line,
    indent,
    log,
    machine_info,
    message_body,
    message_headers,
    percentile,
    post_message,
    print_common_errors,
    print_summary,
    print_table,
    run_main,
    start_two_connectors,
    summary_head,
)

TARGET_RECOVERY_S = 2.0
POLL_INTERVAL = 0.010  # seconds between /health attempts
HEALTH_REQUEST_TIMEOUT = 2.0  # per attempt; an answer slower than the target misses it anyway
HEALTH_LIMIT = 60.0  # a restart that is not healthy by then fails the bench
IDLE_SETTLE = 1.0  # seconds between a recovery and the next idle kill
LOAD_LEADS = (0.5, 0.75, 1.0, 1.25, 1.5)  # seconds of load before each load kill (cycled)
WARMUP_MESSAGES = 20


# --------------------------------------------------------------------------- kill and restart


@dataclass
class HealthPoll:
    healthy_at: float  # monotonic, the 200 answer arrived
    first_answer_at: float  # monotonic, the first HTTP answer of any status arrived
    attempts: int
    not_200: int  # answers other than 200 (503 while a check fails)
    timeouts: int


async def poll_health(session: aiohttp.ClientSession, proc: Proc, url: str) -> HealthPoll:
    """GET ``url`` every POLL_INTERVAL until 200; fail if ``proc`` dies or HEALTH_LIMIT passes."""
    deadline = time.monotonic() + HEALTH_LIMIT
    first_answer: float | None = None
    attempts = not_200 = timeouts = 0
    last = "no answer yet"
    timeout = aiohttp.ClientTimeout(total=HEALTH_REQUEST_TIMEOUT)
    while True:
        if not proc.alive():
            raise BenchError(proc.describe_death())
        attempts += 1
        try:
            async with session.get(url, timeout=timeout) as resp:
                body = await resp.read()
                now = time.monotonic()
                if first_answer is None:
                    first_answer = now
                if resp.status == 200:
                    return HealthPoll(now, first_answer, attempts, not_200, timeouts)
                not_200 += 1
                last = f"{resp.status} {body[:300].decode(errors='replace')}"
        except TimeoutError:
            timeouts += 1
            last = f"no answer within {HEALTH_REQUEST_TIMEOUT:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise BenchError(
                f"{proc.name} did not answer 200 on {url} within {HEALTH_LIMIT:.0f} s after "
                f"kill -9 and restart (last: {last}); last output ({proc.log_path}):\n"
                f"{indent(proc.tail())}"
            )
        await asyncio.sleep(POLL_INTERVAL)


def backbone_backlog(db: Path, address: str) -> int | None:
    """Messages waiting for ``address`` in the backbone's inbox (query-only; None if unreadable)."""
    try:
        connection = sqlite3.connect(db, timeout=5)
        try:
            connection.execute("PRAGMA query_only = ON")
            row = connection.execute(
                "SELECT count(*) FROM inbox WHERE recipient = ? AND kind = 'message'", (address,)
            ).fetchone()
            return int(row[0])
        finally:
            connection.close()
    except sqlite3.Error:
        return None


@dataclass
class Trial:
    mode: str
    number: int
    kill_to_start: float
    start_to_answer: float
    start_to_healthy: float
    kill_to_healthy: float
    attempts: int
    not_200: int
    timeouts: int
    backlog_at_kill: int | None = None
    backlog_at_healthy: int | None = None


async def trial(
    health_session: aiohttp.ClientSession,
    b: Connector,
    mode: str,
    number: int,
    restarts: itertools.count[int],
    backlog: tuple[Path, str] | None,
) -> Trial:
    """kill -9 B, start it again at once, poll /health until 200."""
    killed_at = b.proc.kill9()
    started_at = b.proc.restart(f"restart #{next(restarts)} of {b.proc.name} after kill -9")
    at_kill: asyncio.Task[int | None] | None = None
    if backlog is not None:
        at_kill = asyncio.create_task(asyncio.to_thread(backbone_backlog, *backlog))
    poll = await poll_health(health_session, b.proc, f"{b.url}/health")
    result = Trial(
        mode=mode,
        number=number,
        kill_to_start=started_at - killed_at,
        start_to_answer=poll.first_answer_at - started_at,
        start_to_healthy=poll.healthy_at - started_at,
        kill_to_healthy=poll.healthy_at - killed_at,
        attempts=poll.attempts,
        not_200=poll.not_200,
        timeouts=poll.timeouts,
    )
    if backlog is not None and at_kill is not None:
        result.backlog_at_kill = await at_kill
        result.backlog_at_healthy = await asyncio.to_thread(backbone_backlog, *backlog)
    log(
        f"{mode} #{number}: kill -> 200 {result.kill_to_healthy:.3f} s "
        f"(start -> 200 {result.start_to_healthy:.3f} s, {poll.attempts} polls"
        + (
            f", backlog at kill {result.backlog_at_kill}, at 200 {result.backlog_at_healthy}"
            if backlog is not None
            else ""
        )
        + ")"
    )
    return result


# --------------------------------------------------------------------------- sending


async def send(
    session: aiohttp.ClientSession,
    a: Connector,
    recipient: str,
    run_id: str,
    kind: str,
    seq: int,
    prefer_async: bool,
) -> Sent:
    """One message A -> B; its ``kind`` and ``seq`` identify it at B."""
    return await post_message(
        session,
        f"{a.url}/api/v1/messages",
        message_headers(a.headers, prefer_async),
        message_body(recipient, run_id, kind, seq),
        seq,
        kind=kind,
    )


@dataclass
class Load:
    """``concurrency`` tasks POSTing A -> B back to back from ``start()`` until ``stop()``."""

    session: aiohttp.ClientSession
    a: Connector
    recipient: str
    run_id: str
    concurrency: int
    prefer_async: bool
    results: list[Sent] = field(default_factory=list)
    started_at: float = 0.0
    stopped_at: float = 0.0
    _seqs: itertools.count[int] = field(default_factory=itertools.count)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def _sender(self) -> None:
        while not self._stop.is_set():
            seq = next(self._seqs)
            self.results.append(
                await send(
                    self.session,
                    self.a,
                    self.recipient,
                    self.run_id,
                    "load",
                    seq,
                    self.prefer_async,
                )
            )

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._tasks = [asyncio.create_task(self._sender()) for _ in range(self.concurrency)]

    def check(self) -> None:
        """Raise a sender's exception now rather than at the end."""
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                task.result()

    async def stop(self) -> None:
        """Let every sender finish its request in flight, then return."""
        self._stop.set()
        try:
            await asyncio.gather(*self._tasks)
        finally:
            self.stopped_at = time.monotonic()

    async def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# --------------------------------------------------------------------------- receiving


async def total_received(session: aiohttp.ClientSession, b: Connector) -> int:
    """B's count of received messages; a sync status without one fails the bench."""
    value = await b.total_received(session)
    if value is None:
        status = await b.get_json(session, "/api/v1/account/sync")
        raise BenchError(f"no totalReceived in B's GET /api/v1/account/sync: {status}")
    return value


async def wait_received(
    session: aiohttp.ClientSession,
    b: Connector,
    cluster: Cluster,
    expected_total: int,
    stall_timeout: float = 60.0,
) -> tuple[bool, int, float]:
    """Poll B's totalReceived until ``expected_total`` (or no progress for ``stall_timeout``).

    Returns (reached, last value, seconds waited).
    """
    start = last_progress = time.monotonic()
    last = -1
    while True:
        cluster.check_alive()
        total = await total_received(session, b)
        now = time.monotonic()
        if total >= expected_total:
            return True, total, now - start
        if total != last:
            last, last_progress = total, now
        if now - last_progress > stall_timeout:
            log(f"giving up: B's totalReceived stays at {total} of {expected_total}")
            return False, total, now - start
        await asyncio.sleep(0.2)


@dataclass
class Delivery:
    accepted: int
    received: int  # distinct (kind, seq) of this run at B
    missing: list[tuple[str, int]]
    duplicates: int  # extra copies of a (kind, seq) or of a message id
    unexpected: int  # at B although its send got no 201/202 (a transport error, say)
    id_mismatch: int  # accepted, but A's answered id is not among B's ids
    not_received_status: Counter[str]


def check_delivery(sends: Sequence[Sent], items: list[dict[str, Any]], run_id: str) -> Delivery:
    accepted = {(s.kind, s.seq): s.message_id for s in sends if s.status in (201, 202)}
    copies: Counter[tuple[str, int]] = Counter()
    ids: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    for item in items:
        content = item.get("content")
        if not (isinstance(content, dict) and content.get("bench") == run_id):
            continue
        kind, seq = content.get("kind"), content.get("seq")
        if not isinstance(kind, str) or not isinstance(seq, int):
            continue
        copies[(kind, seq)] += 1
        ids[str(item.get("id"))] += 1
        if item.get("status") != "received":
            statuses[str(item.get("status"))] += 1
    return Delivery(
        accepted=len(accepted),
        received=len(copies),
        missing=sorted(accepted.keys() - copies.keys()),
        duplicates=sum(n - 1 for n in copies.values()) + sum(n - 1 for n in ids.values()),
        unexpected=len(copies.keys() - accepted.keys()),
        id_mismatch=sum(1 for key, mid in accepted.items() if key in copies and mid not in ids),
        not_received_status=statuses,
    )


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10, help="kills per mode (10)")
    parser.add_argument(
        "--concurrency", type=int, default=8, help="concurrent senders A -> B under load (8)"
    )
    parser.add_argument(
        "--prefer-async",
        action="store_true",
        help="the load sends with 'Prefer: respond-async' (202s, A's outbox sends them)",
    )
    parser.add_argument("--quick", action="store_true", help="3 trials per mode")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and logs")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials = min(args.trials, 3)
    if args.trials <= 0 or args.concurrency <= 0:
        parser.error("--trials and --concurrency must be positive")
    return args


def secs(value: float) -> str:
    return f"{value:.3f} s"


def p50_max(values: Sequence[float]) -> str:
    ordered = sorted(values)
    return f"{secs(percentile(ordered, 50))} / {secs(ordered[-1])}"


def int_p50_max(values: Sequence[int | None]) -> str:
    known = sorted(v for v in values if v is not None)
    if not known:
        return "-"
    return f"{percentile(known, 50):.0f} / {known[-1]}"


def mode_rows(mode: str, trials: Sequence[Trial]) -> list[Row]:
    worst = max(t.kill_to_healthy for t in trials)
    rows = [
        Row(
            f"{mode}: kill -> health 200  p50 / max",
            p50_max([t.kill_to_healthy for t in trials]),
            f"max <= {TARGET_RECOVERY_S:g} s",
            check(worst <= TARGET_RECOVERY_S),
        ),
        Row(
            f"{mode}: process start -> health 200  p50 / max",
            p50_max([t.start_to_healthy for t in trials]),
        ),
        Row(
            f"{mode}: process start -> first HTTP answer  p50 / max",
            p50_max([t.start_to_answer for t in trials]),
        ),
        Row(
            f"{mode}: kill -> new process spawned  max",
            f"{max(t.kill_to_start for t in trials) * 1e3:.1f} ms",
        ),
        Row(
            f"{mode}: /health polls per trial max (non-200 / timed out)",
            f"{max(t.attempts for t in trials)} "
            f"({sum(t.not_200 for t in trials)} / {sum(t.timeouts for t in trials)})",
        ),
    ]
    return rows


def mode_summary(trials: Sequence[Trial]) -> dict[str, Any]:
    kill = sorted(t.kill_to_healthy for t in trials)
    start = sorted(t.start_to_healthy for t in trials)
    return {
        "p50": round(percentile(kill, 50), 3),
        "max": round(kill[-1], 3),
        "startP50": round(percentile(start, 50), 3),
        "startMax": round(start[-1], 3),
        "all": [round(t.kill_to_healthy, 3) for t in trials],
    }


async def main(args: argparse.Namespace) -> int:
    info = machine_info()
    print(header_line(info), flush=True)
    run_id = os.urandom(6).hex()
    restarts = itertools.count(1)
    idle: list[Trial] = []
    loaded: list[Trial] = []
    sends: list[Sent] = []
    load: Load | None = None
    with Cluster.create("bench-recovery-", keep=args.keep) as cluster:
        try:
            async with (
                client_session(limit=args.concurrency + 8) as session,
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(force_close=True, limit=4),
                    auto_decompress=False,
                ) as health_session,
            ):
                pair = await start_two_connectors(session, cluster)
                a, b, address_b = pair.a, pair.b, pair.address_b
                backlog_src = (cluster.root / "backbone" / "backbone.sqlite3", address_b)
                baseline = await total_received(session, b)
                log(f"B = {address_b}, run {run_id}")

                log(f"warm-up: {WARMUP_MESSAGES} messages A -> B")
                sends = list(
                    await asyncio.gather(
                        *(
                            send(session, a, address_b, run_id, "warmup", seq, False)
                            for seq in range(WARMUP_MESSAGES)
                        )
                    )
                )
                warm_ok = sum(1 for s in sends if s.status in (201, 202))
                if not warm_ok:
                    raise BenchError(f"warm-up: every send failed, first: {sends[0].error}")
                ok, got, _ = await wait_received(session, b, cluster, baseline + warm_ok)
                if not ok:
                    raise BenchError(f"warm-up: B received {got - baseline} of {warm_ok}")

                log(f"{args.trials} idle trials")
                for number in range(1, args.trials + 1):
                    await asyncio.sleep(IDLE_SETTLE)
                    cluster.check_alive()
                    idle.append(await trial(health_session, b, "idle", number, restarts, None))

                log(f"{args.trials} trials under load: {args.concurrency} senders A -> B")
                load = Load(session, a, address_b, run_id, args.concurrency, args.prefer_async)
                load.start()
                for number in range(1, args.trials + 1):
                    await asyncio.sleep(LOAD_LEADS[(number - 1) % len(LOAD_LEADS)])
                    load.check()
                    cluster.check_alive()
                    loaded.append(
                        await trial(health_session, b, "load", number, restarts, backlog_src)
                    )
                await load.stop()
                sends.extend(load.results)
                load_seconds = load.stopped_at - load.started_at
                load_accepted = sum(1 for s in load.results if s.status in (201, 202))
                load_statuses = Counter(s.status for s in load.results)
                if not load_accepted:
                    errors = Counter(s.error for s in load.results).most_common(3)
                    raise BenchError(f"under load: no send was accepted; errors: {errors}")

                accepted = sum(1 for s in sends if s.status in (201, 202))
                log(
                    f"load stopped after {load_seconds:.1f} s; waiting for B to hold all {accepted}"
                )
                complete, _, drained = await wait_received(session, b, cluster, baseline + accepted)
                await asyncio.sleep(2.0)  # a late duplicate would show up in the listing
                items = await b.incoming_messages(session, max_pages=accepted // 1000 + 50)
                sync_status = await b.get_json(session, "/api/v1/account/sync")
                cluster.check_alive()
        except BaseException:
            if load is not None:
                await load.cancel()
            raise

    # ------------------------------------------------------------------ report
    delivery = check_delivery(sends, items, run_id)
    failed_sends = [s for s in sends if s.status not in (201, 202)]
    idle_met = max(t.kill_to_healthy for t in idle) <= TARGET_RECOVERY_S
    load_met = max(t.kill_to_healthy for t in loaded) <= TARGET_RECOVERY_S
    data_ok = not delivery.missing and not delivery.duplicates and not delivery.id_mismatch
    send_mode = "Prefer: respond-async" if args.prefer_async else "plain sends"
    rows = [
        *mode_rows("idle", idle),
        *mode_rows("load", loaded),
        Row(
            "load: waiting for B at the backbone at kill  p50 / max",
            int_p50_max([t.backlog_at_kill for t in loaded]),
        ),
        Row(
            "load: waiting for B at the backbone at 200  p50 / max",
            int_p50_max([t.backlog_at_healthy for t in loaded]),
        ),
        Row(
            f"messages accepted during load ({args.concurrency} senders, {send_mode})",
            f"{load_accepted:,} in {load_seconds:.1f} s ({load_accepted / load_seconds:,.0f} /s)",
        ),
        Row(
            "  answers 201 / 202 / other / no answer",
            f"{load_statuses[201]:,} / {load_statuses[202]:,} / "
            f"{sum(n for s, n in load_statuses.items() if s not in (0, 201, 202)):,} / "
            f"{load_statuses[0]:,}",
        ),
        Row(
            "received at B (warm-up + load)",
            f"{delivery.received:,} of {delivery.accepted:,} accepted"
            + ("" if complete else " (gave up waiting)"),
        ),
        Row("all at B after the load stopped", secs(drained) if complete else "no"),
        Row(
            "missing / duplicates",
            f"{len(delivery.missing):,} / {delivery.duplicates:,}",
            "0 / 0",
            check(not delivery.missing and not delivery.duplicates),
        ),
        Row(
            "answered id not at B / arrived unaccepted / not 'received'",
            f"{delivery.id_mismatch:,} / {delivery.unexpected:,} / "
            f"{sum(delivery.not_received_status.values()):,}",
        ),
    ]
    print_table(
        f"bench/recovery.py — kill -9 connector B, start again, GET /health 200: "
        f"{args.trials} trials idle, {args.trials} under load",
        rows,
    )
    for name, trials in (("idle", idle), ("load", loaded)):
        print(
            f"{name} kill -> 200 per trial (s): "
            + " ".join(f"{t.kill_to_healthy:.3f}" for t in trials)
        )
    print(
        "load backlog at kill / at 200 per trial: "
        + " ".join(f"{t.backlog_at_kill}/{t.backlog_at_healthy}" for t in loaded)
    )
    print_common_errors("send errors (most common first)", failed_sends)
    if delivery.missing:
        print(f"missing (kind, seq), first 20: {delivery.missing[:20]}")
    if delivery.not_received_status:
        print(f"incoming status other than 'received': {dict(delivery.not_received_status)}")
    if sync_status.get("lastError"):
        print(f"B sync lastError: {sync_status.get('lastError')}")

    met = {"idleMax": idle_met, "loadMax": load_met}
    print_summary(
        {
            **summary_head("recovery", info),
            "trials": args.trials,
            "concurrency": args.concurrency,
            "preferAsync": args.prefer_async,
            "idle": mode_summary(idle),
            "load": {
                **mode_summary(loaded),
                "backlogAtKillMax": max(
                    (t.backlog_at_kill for t in loaded if t.backlog_at_kill is not None),
                    default=None,
                ),
                "backlogAtHealthyMax": max(
                    (t.backlog_at_healthy for t in loaded if t.backlog_at_healthy is not None),
                    default=None,
                ),
            },
            "loadAccepted": load_accepted,
            "loadSeconds": round(load_seconds, 2),
            "sendErrors": len(failed_sends),
            "receivedAtB": delivery.received,
            "missing": len(delivery.missing),
            "duplicates": delivery.duplicates,
            "idMismatch": delivery.id_mismatch,
            "targetsMet": met,
        }
    )
    if not data_ok:
        return 1
    return 1 if args.strict and not all(met.values()) else 0


if __name__ == "__main__":
    arguments = parse_args()
    sys.exit(run_main(lambda: main(arguments)))
