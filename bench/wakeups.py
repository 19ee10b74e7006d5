"""Cross-replica wake-up benchmark (issue 15): how soon a long-poll on one replica answers
after a commit on another replica of the same identity, on one PostgreSQL database.

A backbone and identity A run by replicas a1 and a2 (separate processes, 127.0.0.1, a fresh
PostgreSQL database created here and dropped at the end, the same API key and master key).
Each timed step:

1. a long-poll ``GET /api/v1/events?type=message.sent&after=<head>&wait=10`` goes to the
   ``waiter`` replica and is given ``--settle`` seconds to be waiting;
2. ``POST /api/v1/messages`` (201, A to itself) goes to the ``writer`` replica: its commit
   writes the ``message.sent`` event;
3. timed: the 201's arrival -> the long-poll's answer holding that event.

Two pairs, alternating step by step: ``a1 -> a2`` (the event committed on another replica:
the commit signal, LISTEN/NOTIFY) and ``a1 -> a1`` (the same replica: its own after-commit
hook, the floor). Before the signals a cross-replica waiter found the event at its next look
at the database, every second (run this script against commit 81bbb22 to see it: 945 ms p50
on 2026-12-05, the steps falling into step with the looks). A bare aiohttp handler's
round trip (``bench/messages.py``'s, its own process) is measured in the same run as the
machine's baseline.

    python bench/wakeups.py                  # 200 steps per pair
    python bench/wakeups.py --quick          # 40 per pair
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import secrets
import statistics
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    BenchError,
    Cluster,
    Connector,
    Row,
    check,
    client_session,
    header_line,
    json_number,
    log,
    machine_info,
    percentile,
    print_summary,
    print_table,
    run_main,
    summary_head,
)
from replicas import Identity, bare_servers, fresh_databases, start_identity

TARGET_P50_MS = 50.0
"""A cross-replica wake-up within a few commits' time; the rechecks it replaces took ~500 ms."""
WAIT = 10


async def head_cursor(session: aiohttp.ClientSession, node: Connector) -> str:
    """The feed's cursor after its newest event (an empty long-poll page keeps the cursor)."""
    cursor: str | None = None
    while True:
        params = {"limit": "1000", **({"after": cursor} if cursor else {})}
        async with session.get(
            f"{node.url}/api/v1/events", params=params, headers=node.headers
        ) as response:
            page = await response.json()
            if response.status != 200:
                raise BenchError(f"events: {response.status} {page}")
        cursor = page["nextCursor"]
        if not page["items"]:
            return str(cursor)


async def step(
    session: aiohttp.ClientSession,
    writer: Connector,
    waiter: Connector,
    address: str,
    settle: float,
) -> float:
    """One timed wake-up: ms from the writer's 201 to the waiter's long-poll answer."""
    after = await head_cursor(session, waiter)
    params = {"type": "message.sent", "after": after, "wait": str(WAIT)}

    async def long_poll() -> tuple[int, dict[str, object]]:
        async with session.get(
            f"{waiter.url}/api/v1/events", params=params, headers=waiter.headers
        ) as response:
            body = await response.json()
            return response.status, body

    polling = asyncio.create_task(long_poll())
    await asyncio.sleep(settle)  # the long-poll is waiting now
    async with session.post(
        f"{writer.url}/api/v1/messages",
        json={"recipients": [address], "content": {"n": secrets.token_hex(4)}},
        headers=writer.headers,
    ) as response:
        sent = await response.json()
        if response.status != 201:
            raise BenchError(f"send: {response.status} {sent}")
    written_ns = time.perf_counter_ns()
    status, page = await polling
    answered_ns = time.perf_counter_ns()
    items = page.get("items") or []
    assert isinstance(items, list)
    if status != 200 or not any(
        isinstance(e, dict) and e.get("data", {}).get("id") == sent["id"] for e in items
    ):
        raise BenchError(f"the long-poll on {waiter.url} answered without the event: {page}")
    return (answered_ns - written_ns) / 1e6


async def bare_round_trip(session: aiohttp.ClientSession, count: int) -> float:
    """p50 ms of a POST to the bare aiohttp handler, one at a time."""
    async with bare_servers(1) as (target,):
        times = []
        for n in range(count + 20):
            started = time.perf_counter_ns()
            async with session.post(f"{target.url}/api/v1/messages", json={"n": n}) as response:
                await response.read()
            if n >= 20:
                times.append((time.perf_counter_ns() - started) / 1e6)
    return statistics.median(times)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="timed steps per pair (200)")
    parser.add_argument("--settle", type=float, default=0.05, help="s for a long-poll to wait")
    parser.add_argument("--quick", action="store_true", help="40 steps per pair")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and logs")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.quick:
        args.count = min(args.count, 40)
    if args.count <= 0:
        parser.error("--count must be positive")
    return args


async def main(args: argparse.Namespace) -> int:
    info = machine_info()
    print(header_line(info), flush=True)
    print(f"# load average (1, 5, 15 min): {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    pairs: dict[str, list[float]] = {"other replica": [], "same replica": []}
    async with fresh_databases(("a",)) as urls:
        with Cluster.create("bench-wakeups-", keep=args.keep) as cluster:
            async with client_session(limit=16) as session:
                backbone = cluster.start_backbone()
                await backbone.wait_ready(session)
                a = Identity("a", urls["a"], f"bench-key-a-{secrets.token_hex(8)}")
                await start_identity(session, cluster, a, backbone.url)
                a1, a2 = a.replicas["a1"], a.replicas["a2"]
                log(f"A = {a.address}; warming up")
                for _ in range(5):
                    await step(session, a1, a2, a.address, args.settle)
                    await step(session, a1, a1, a.address, args.settle)
                for n in range(args.count):
                    pairs["other replica"].append(
                        await step(session, a1, a2, a.address, args.settle)
                    )
                    pairs["same replica"].append(
                        await step(session, a1, a1, a.address, args.settle)
                    )
                    if (n + 1) % 50 == 0:
                        log(f"{n + 1} / {args.count}")
                bare = await bare_round_trip(session, 200)
    return report(args, info, pairs, bare)


def report(
    args: argparse.Namespace, info: dict[str, object], pairs: dict[str, list[float]], bare: float
) -> int:
    rows = []
    summary = summary_head("wakeups", info, count=args.count)
    other_p50 = math.nan
    for name, times in pairs.items():
        p50, p99 = percentile(sorted(times), 50), percentile(sorted(times), 99)
        cross = name == "other replica"
        if cross:
            other_p50 = p50
        rows.append(
            Row(
                f"wake-up, {name} (p50 / p99 ms)",
                f"{p50:.1f} / {p99:.1f}",
                f"p50 <= {TARGET_P50_MS:.0f} ms" if cross else "",
                check(p50 <= TARGET_P50_MS) if cross else "",
            )
        )
        rows.append(
            Row(f"  ratio to a bare handler's round trip ({bare:.2f} ms)", f"{p50 / bare:.0f}x")
        )
        key = "other" if cross else "same"
        summary[f"{key}_p50_ms"] = json_number(p50, 2)
        summary[f"{key}_p99_ms"] = json_number(p99, 2)
    summary["bare_ms"] = json_number(bare, 3)
    print_table("Cross-replica wake-ups (a long-poll on the event feed)", rows)
    print_summary(summary)
    return 1 if args.strict and not other_p50 <= TARGET_P50_MS else 0


if __name__ == "__main__":
    arguments = parse_args()
    sys.exit(run_main(lambda: main(arguments)))
