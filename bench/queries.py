"""Filtered message queries against a large store.

Fills a connector database with N messages (default 1,000,000: 1,000 peers, 50 names, both
directions), starts the connector on it, and times ``GET /api/v1/messages`` with the filters
business systems use most, over real HTTP. Prints p50/p90/p99 per query shape.

    python bench/queries.py [--count 1000000] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connector.local import local_settings, running_connector
from storage.engine import create_engine
from storage.migrate import upgrade

TARGET_P50_MS = 10.0


def _address(i: int) -> str:
    return "id1" + f"{i:032d}".replace("0", "a").replace("1", "b")[:32]


def fill(db: Path, count: int, me: str) -> None:
    """Insert ``count`` messages (and their recipients) with plain sqlite3, in big batches."""
    rng = random.Random(7)
    connection = sqlite3.connect(db)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=OFF")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    batch = 20_000
    for offset in range(0, count, batch):
        messages = []
        recipients = []
        for seq in range(offset + 1, min(count, offset + batch) + 1):
            peer = _address(rng.randrange(1000))
            incoming = rng.random() < 0.5
            created = (start + timedelta(seconds=seq)).replace(tzinfo=None).isoformat(" ")
            messages.append(
                (
                    seq,
                    "MSG" + f"{seq:017d}",
                    "incoming" if incoming else "outgoing",
                    peer if incoming else me,
                    f"order.event{rng.randrange(50)}",
                    f"order-{rng.randrange(200_000)}",
                    json.dumps({"n": seq}),
                    "received" if incoming else "delivered",
                    created,
                    "[]",
                )
            )
            recipients.append((seq, 0, me if incoming else peer))
        connection.executemany(
            "INSERT INTO messages (seq, id, direction, sender, name, correlation_key, content,"
            " status, created_at, tags) VALUES (?,?,?,?,?,?,?,?,?,?)",
            messages,
        )
        connection.executemany(
            "INSERT INTO message_recipients (message_seq, position, address) VALUES (?,?,?)",
            recipients,
        )
        connection.commit()
        print(f"\r  filled {min(count, offset + batch):,} / {count:,}", end="", flush=True)
    print()
    connection.execute("ANALYZE")
    connection.commit()
    connection.close()


async def measure(count: int, requests: int) -> dict[str, dict[str, float]]:
    from backbone.server import start_embedded

    with tempfile.TemporaryDirectory(prefix="bench-queries-") as tmp:
        root = Path(tmp)
        runner, backbone_url = await start_embedded(root / "backbone")
        key = "bench-" + secrets.token_hex(8)
        settings = local_settings(
            root / "node", backbone_url, key, sync={"long_poll": False, "interval": 3600}
        )
        settings.data_dir.mkdir(parents=True)
        engine = create_engine(settings.database_url)
        await upgrade(engine)
        await engine.dispose()
        me = _address(10_000)
        started = time.perf_counter()
        await asyncio.to_thread(fill, settings.data_dir / "connector.sqlite3", count, me)
        print(f"  fill took {time.perf_counter() - started:.1f} s")
        shapes: dict[str, Callable[[random.Random], dict[str, str]]] = {
            "peer+name": lambda r: {
                "peer": _address(r.randrange(1000)),
                "name": f"order.event{r.randrange(50)}",
            },
            "peer": lambda r: {"peer": _address(r.randrange(1000))},
            "name+correlationKey": lambda r: {
                "name": f"order.event{r.randrange(50)}",
                "correlationKey": f"order-{r.randrange(200_000)}",
            },
            "direction=incoming": lambda r: {"direction": "incoming"},
            "unfiltered": lambda r: {},
        }
        results: dict[str, dict[str, float]] = {}
        try:
            async with (
                running_connector(settings, key) as node,
                aiohttp.ClientSession(headers={"X-API-KEY": key}) as http,
            ):
                rng = random.Random(11)
                for shape, params in shapes.items():
                    timings = []
                    for _ in range(requests):
                        query = {**params(rng), "limit": "50"}
                        t0 = time.perf_counter()
                        async with http.get(node.url + "/api/v1/messages", params=query) as r:
                            body = await r.json()
                            assert r.status == 200, body
                        timings.append((time.perf_counter() - t0) * 1000)
                    timings.sort()
                    results[shape] = {
                        "p50_ms": statistics.median(timings),
                        "p90_ms": timings[int(len(timings) * 0.9)],
                        "p99_ms": timings[min(len(timings) - 1, int(len(timings) * 0.99))],
                    }
        finally:
            await runner.cleanup()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="20,000 messages, 50 requests")
    args = parser.parse_args()
    if args.quick:
        args.count, args.requests = 20_000, 50
    print(f"bench/queries.py  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  messages={args.count:,}")
    results = asyncio.run(measure(args.count, args.requests))
    print(f"{'query (limit=50)':<24}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}")
    for shape, figures in results.items():
        print(
            f"{shape:<24}{figures['p50_ms']:>10.2f}{figures['p90_ms']:>10.2f}"
            f"{figures['p99_ms']:>10.2f}"
        )
    ok = results["peer+name"]["p50_ms"] <= TARGET_P50_MS
    print(f"target: peer+name p50 <= {TARGET_P50_MS} ms: {'reached' if ok else 'NOT reached'}")
    print(json.dumps({"count": args.count, "results": results}))


if __name__ == "__main__":
    main()
