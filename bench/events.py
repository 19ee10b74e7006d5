"""Event-feed latency: a 201 at connector A to the ``message.received`` event at B's long-poll.

Starts a backbone and two connectors A and B (separate processes, 127.0.0.1, temp dirs, both
keeping a long-poll open to the backbone). A consumer task in this process follows B's event
feed the way an integration would: it reads to the end of the feed for a starting cursor, then
loops ``GET /api/v1/events?after=<cursor>&type=message.received&wait=30`` and notes, for every
event, the moment (``time.perf_counter``) the answer carrying it arrived. Meanwhile senders POST
small JSON messages A -> B, one at a time with a pause between (``--interval``, so each message
is measured on an idle system), and note the moment each 201 arrived. Both times come from the
same clock in the same process:

- latency            = the feed answer carrying the event at B - the 201 answer at A
- latency from start = the feed answer carrying the event at B - the start of the POST

A answers only after the platform took the message, and B may answer its long-poll before that
201 reaches the client, so the latency can be negative; the latency from the request start is
the upper bound. Every sent message must produce exactly one ``message.received`` event at B
(matched by a run id and sequence number in the content, and by the message id).

    python bench/events.py                     # 1,000 messages, 1 sender, 20 ms apart
    python bench/events.py --count 5000 --interval 0.005
    python bench/events.py --concurrency 4     # 4 senders, each pausing between its sends
    python bench/events.py --quick             # 100 messages, a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    BenchError,
    Cluster,
    Connector,
    Row,
    Sent,
    check,
    client_session,
    format_ms,
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
    start_two_connectors,
    summary_head,
)

TARGET_P50_MS = 50.0
TARGET_P99_MS = 250.0
EVENT_TYPE = "message.received"
FEED_WAIT = 30.0  # seconds a feed request may wait (the API allows up to 60)


# --------------------------------------------------------------------------- sending


async def send_paced(
    session: aiohttp.ClientSession,
    a: Connector,
    recipient: str,
    run_id: str,
    kind: str,
    count: int,
    concurrency: int,
    interval: float,
) -> list[Sent]:
    """``count`` messages from ``concurrency`` tasks, each pausing ``interval`` s after a send.

    The Sent times are ``perf_counter_ns``, as the feed consumer's; anything but a 201 with an
    id is a Sent with ``error``.
    """
    url = f"{a.url}/api/v1/messages"
    headers = message_headers(a.headers)
    todo = iter(range(count))
    results: list[Sent] = []

    async def sender(worker: int) -> None:
        for seq in todo:
            body = message_body(recipient, run_id, kind, seq, worker)
            sent = await post_message(
                session, url, headers, body, seq, clock=time.perf_counter_ns, accepted=(201,)
            )
            results.append(sent)
            if interval > 0:
                await asyncio.sleep(interval)

    await asyncio.gather(*(sender(i) for i in range(concurrency)))
    return results


# --------------------------------------------------------------------------- the feed at B


@dataclass
class Seen:
    """One ``message.received`` event of this run, as the consumer got it."""

    event_id: str
    message_id: str | None
    status: str | None
    answer_ns: int  # perf_counter_ns when the feed answer carrying it had arrived


@dataclass
class FeedConsumer:
    """Follows B's feed with long-polls and notes when each event of the run arrived."""

    b: Connector
    run_id: str
    cursor: str | None = None
    seen: dict[str, dict[int, list[Seen]]] = field(default_factory=dict)  # kind -> seq -> ...
    event_ids: Counter[str] = field(default_factory=Counter)
    answers: int = 0  # feed answers with events
    empty_answers: int = 0  # feed answers without (the wait ran out)
    max_batch: int = 0
    foreign: int = 0  # events not of this run, or without a seq
    wrong_type: int = 0
    transport_retries: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def count(self, kind: str) -> int:
        return len(self.seen.get(kind, {}))

    async def _get(
        self, session: aiohttp.ClientSession, params: dict[str, str], wait: float
    ) -> tuple[dict[str, Any], int]:
        """One feed request: (the page, perf_counter_ns when its answer had arrived)."""
        async with session.get(
            f"{self.b.url}/api/v1/events",
            headers=self.b.headers,
            params=params,
            timeout=aiohttp.ClientTimeout(total=wait + 30),
        ) as resp:
            raw = await resp.read()
            arrived = time.perf_counter_ns()
            if resp.status != 200:
                raise BenchError(
                    f"GET /api/v1/events {params} on {self.b.proc.name} answered {resp.status}: "
                    f"{raw[:2000].decode(errors='replace')}\n{self.b.proc.tail(30)}"
                )
        page: dict[str, Any] = json.loads(raw)
        return page, arrived

    async def skip_to_end(self, session: aiohttp.ClientSession) -> int:
        """Read the whole feed (no waiting) so that the cursor is at its end; returns the count."""
        skipped = 0
        for _ in range(100_000):
            params = {"limit": "1000", "wait": "0"}
            if self.cursor is not None:
                params["after"] = self.cursor
            page, _ = await self._get(session, params, 0)
            self.cursor = str(page["nextCursor"])
            items = page.get("items") or []
            skipped += len(items)
            if not items:
                return skipped
        raise BenchError("GET /api/v1/events did not reach the end of the feed (cursor loop?)")

    async def follow(self, session: aiohttp.ClientSession) -> None:
        """Long-poll for ``message.received`` events until cancelled."""
        assert self.cursor is not None, "skip_to_end() first"
        failures = 0
        while True:
            params = {
                "after": self.cursor,
                "type": EVENT_TYPE,
                "limit": "1000",
                "wait": f"{FEED_WAIT:g}",
            }
            try:
                page, arrived = await self._get(session, params, FEED_WAIT)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                failures += 1
                self.transport_retries += 1
                if failures >= 5:
                    raise BenchError(
                        f"GET /api/v1/events failed {failures} times in a row, last: "
                        f"{type(exc).__name__}: {exc}\n{self.b.proc.tail(30)}"
                    ) from exc
                await asyncio.sleep(0.1)
                continue
            failures = 0
            self.cursor = str(page["nextCursor"])
            items = page.get("items") or []
            if not items:
                self.empty_answers += 1
                continue
            self.answers += 1
            self.max_batch = max(self.max_batch, len(items))
            for item in items:
                self._note(item, arrived)
            self.changed.set()

    def _note(self, item: dict[str, Any], arrived: int) -> None:
        self.event_ids[str(item.get("id"))] += 1
        if item.get("type") != EVENT_TYPE:
            self.wrong_type += 1
            return
        data = item.get("data") or {}
        content = data.get("content")
        if not isinstance(content, dict) or content.get("bench") != self.run_id:
            self.foreign += 1
            return
        seq, kind = content.get("seq"), content.get("kind")
        if not isinstance(seq, int) or not isinstance(kind, str):
            self.foreign += 1
            return
        message_id = data.get("id")
        self.seen.setdefault(kind, {}).setdefault(seq, []).append(
            Seen(
                event_id=str(item.get("id")),
                message_id=str(message_id) if message_id is not None else None,
                status=data.get("status"),
                answer_ns=arrived,
            )
        )


async def wait_for_events(
    consumer: FeedConsumer,
    task: asyncio.Task[None],
    cluster: Cluster,
    kind: str,
    expected: int,
    stall_timeout: float,
) -> tuple[bool, float]:
    """Until ``expected`` events of ``kind`` arrived or none came for ``stall_timeout`` s.

    Returns (all arrived, seconds waited).
    """
    start = last_progress = time.monotonic()
    last = -1
    while True:
        consumer.changed.clear()  # before counting, so that no new event is slept through
        if task.done():  # the consumer failed: raise its error
            task.result()
            raise BenchError("the event-feed consumer stopped")
        cluster.check_alive()
        got = consumer.count(kind)
        now = time.monotonic()
        if got >= expected:
            return True, now - start
        if got != last:
            last, last_progress = got, now
        elif now - last_progress > stall_timeout:
            log(f"giving up waiting: B's feed had {got}/{expected} {kind} events")
            return False, now - start
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                await consumer.changed.wait()


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="messages (1,000)")
    parser.add_argument("--concurrency", type=int, default=1, help="concurrent senders (1)")
    parser.add_argument(
        "--interval",
        type=float,
        default=0.02,
        help="seconds each sender pauses after a 201 before its next send (0.02)",
    )
    parser.add_argument(
        "--warmup", type=int, default=20, help="untimed messages sent first and awaited (20)"
    )
    parser.add_argument(
        "--linger",
        type=float,
        default=1.0,
        help="seconds to keep following the feed after the last event, for duplicates (1)",
    )
    parser.add_argument(
        "--stall-timeout", type=float, default=30.0, help="give up after this long w/o events"
    )
    parser.add_argument("--quick", action="store_true", help="100 messages smoke run")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and logs")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.quick:
        args.count = min(args.count, 100)
        args.warmup = min(args.warmup, 5)
    if args.count <= 0 or args.concurrency <= 0 or args.warmup < 0 or args.interval < 0:
        parser.error("--count and --concurrency must be positive, --warmup and --interval not")
    return args


async def main(args: argparse.Namespace) -> int:
    info = machine_info()
    print(header_line(info), flush=True)
    run_id = os.urandom(6).hex()
    n = args.count
    follow: asyncio.Task[None] | None = None
    with Cluster.create("bench-events-", keep=args.keep) as cluster:
        try:
            # The feed consumer has its own session, so its long-poll never waits for a free
            # connection behind the senders (and the other way round).
            async with (
                client_session(limit=args.concurrency + 8) as session,
                client_session(limit=4) as feed_session,
            ):
                pair = await start_two_connectors(session, cluster)
                a, b, address_b = pair.a, pair.b, pair.address_b
                log(f"A = {pair.address_a}, B = {address_b}, run {run_id}")

                consumer = FeedConsumer(b, run_id)
                skipped = await consumer.skip_to_end(feed_session)
                log(f"B's feed: {skipped} events before the run; following from {consumer.cursor}")
                follow = asyncio.create_task(consumer.follow(feed_session))

                warm_errors: list[Sent] = []
                if args.warmup:
                    log(f"warm-up: {args.warmup} messages, awaited on B's feed")
                    warm = await send_paced(
                        session, a, address_b, run_id, "warmup", args.warmup, 1, args.interval
                    )
                    warm_errors = [r for r in warm if r.status != 201]
                    if len(warm_errors) == len(warm):
                        raise BenchError(
                            f"warm-up: every send failed, first: {warm_errors[0].error}\n"
                            f"connector A output:\n{a.proc.tail(40)}"
                        )
                    ok, _ = await wait_for_events(
                        consumer, follow, cluster, "warmup", len(warm) - len(warm_errors), 60
                    )
                    if not ok:
                        raise BenchError(
                            f"warm-up: B's feed showed only {consumer.count('warmup')} of "
                            f"{len(warm) - len(warm_errors)} messages\n"
                            f"connector B output:\n{b.proc.tail(40)}"
                        )

                cpu = pair.cpu_meter()
                cpu.start()
                start_ns = time.perf_counter_ns()
                log(
                    f"send {n} messages A -> B, {args.concurrency} sender(s), "
                    f"{args.interval * 1000:g} ms pause after each"
                )
                results = await send_paced(
                    session, a, address_b, run_id, "timed", n, args.concurrency, args.interval
                )
                send_seconds = (time.perf_counter_ns() - start_ns) / 1e9
                accepted = sum(1 for r in results if r.status == 201)
                log(f"send phase done in {send_seconds:.2f} s: {accepted} answered 201")
                cluster.check_alive()
                complete, waited = await wait_for_events(
                    consumer, follow, cluster, "timed", accepted, args.stall_timeout
                )
                wall = (time.perf_counter_ns() - start_ns) / 1e9
                cpu.stop()
                if args.linger > 0:
                    await asyncio.sleep(args.linger)  # late duplicates would show up here
                if follow.done():
                    follow.result()
                cluster.check_alive()
        finally:
            if follow is not None:
                follow.cancel()
                await asyncio.gather(follow, return_exceptions=True)

    # ------------------------------------------------------------------ analysis
    seen = consumer.seen.get("timed", {})
    ok_sends = {r.seq: r for r in results if r.status == 201}
    errors = [r for r in results if r.status != 201]
    missing = sorted(seq for seq in ok_sends if seq not in seen)
    duplicates = sum(len(events) - 1 for events in seen.values())
    duplicate_event_ids = sum(c - 1 for c in consumer.event_ids.values() if c > 1)
    unexpected = len(seen.keys() - ok_sends.keys())  # an event whose send got no 201
    same_id = sum(
        1 for seq, r in ok_sends.items() if seq in seen and seen[seq][0].message_id == r.message_id
    )
    not_received_status = Counter(
        str(events[0].status) for events in seen.values() if events[0].status != "received"
    )
    latencies = sorted(
        seen[seq][0].answer_ns - r.answer_ns for seq, r in ok_sends.items() if seq in seen
    )
    from_start = sorted(
        seen[seq][0].answer_ns - r.start_ns for seq, r in ok_sends.items() if seq in seen
    )
    send_latencies = sorted(r.answer_ns - r.start_ns for r in ok_sends.values())
    negative = sum(1 for v in latencies if v < 0)
    p50, p90, p99 = (percentile(latencies, q) for q in (50, 90, 99))
    worst = latencies[-1] if latencies else math.nan
    best = latencies[0] if latencies else math.nan
    p50_ok = bool(latencies) and p50 <= TARGET_P50_MS * 1e6
    p99_ok = bool(latencies) and p99 <= TARGET_P99_MS * 1e6
    all_delivered = (
        not missing
        and not duplicates
        and not duplicate_event_ids
        and not unexpected
        and not not_received_status
        and not consumer.wrong_type
    )

    rows = [
        Row("warm-up sends (untimed) / errors", f"{args.warmup} / {len(warm_errors)}"),
        Row("messages sent (timed)", f"{len(results):,} of {n:,}"),
        Row(
            "senders / pause after each send",
            f"{args.concurrency} / {args.interval * 1000:g} ms",
        ),
        Row("send phase", f"{send_seconds:.2f} s"),
        Row("answers 201 / errors", f"{accepted:,} / {len(errors):,}"),
        Row(
            "send answer (POST -> 201) p50 / p99",
            f"{format_ms(percentile(send_latencies, 50))} / "
            f"{format_ms(percentile(send_latencies, 99))}",
        ),
        Row(
            f"{EVENT_TYPE} events at B (this run)",
            f"{len(seen):,} of {accepted:,} sent"
            + ("" if complete else f" (gave up after {waited:.0f} s)"),
        ),
        Row(
            "missing / duplicates / without a 201",
            f"{len(missing):,} / {duplicates:,} / {unexpected:,}",
        ),
        Row(
            "duplicate event ids / other runs' events / wrong type",
            f"{duplicate_event_ids:,} / {consumer.foreign:,} / {consumer.wrong_type:,}",
        ),
        Row("same MSG id at A and in B's event", f"{same_id:,} of {len(seen):,}"),
        Row(
            "exactly one event per sent message",
            "yes" if all_delivered else "no",
            "yes",
            check(all_delivered),
        ),
        Row(
            "feed answers with events / empty / most events in one",
            f"{consumer.answers:,} / {consumer.empty_answers:,} / {consumer.max_batch:,}",
        ),
        Row(
            "latency p50 (feed answer at B - 201 at A)",
            format_ms(p50),
            f"<= {TARGET_P50_MS:.0f} ms",
            check(p50_ok),
        ),
        Row("latency p90", format_ms(p90)),
        Row("latency p99", format_ms(p99), f"<= {TARGET_P99_MS:.0f} ms", check(p99_ok)),
        Row("latency max", format_ms(worst)),
        Row("latency min", format_ms(best)),
        Row("events answered before the 201 (negative)", f"{negative:,}"),
        Row(
            "latency from request start p50 / p99",
            f"{format_ms(percentile(from_start, 50))} / {format_ms(percentile(from_start, 99))}",
        ),
        *cpu.rows(wall),
    ]
    print_table(
        f"bench/events.py — {n:,} messages A -> B, {EVENT_TYPE} on B's long-polled feed, "
        f"{args.concurrency} sender(s) (wall {wall:.1f} s)",
        rows,
    )
    print_send_errors(errors, warm_errors)
    if missing:
        print(f"missing seqs (first 20): {missing[:20]}")
    if not_received_status:
        print(f"event message status other than 'received': {dict(not_received_status)}")

    met = {"p50": p50_ok, "p99": p99_ok}
    print_summary(
        {
            **summary_head("events", info),
            "count": n,
            "concurrency": args.concurrency,
            "intervalMs": round(args.interval * 1000, 3),
            "sendSeconds": round(send_seconds, 3),
            "sent201": accepted,
            "errors": len(errors),
            "warmupErrors": len(warm_errors),
            "events": len(seen),
            "missing": len(missing),
            "duplicates": duplicates,
            "duplicateEventIds": duplicate_event_ids,
            "unexpected": unexpected,
            "sameId": same_id,
            "feedAnswers": consumer.answers,
            "emptyFeedAnswers": consumer.empty_answers,
            "p50Ms": json_number(p50 / 1e6, 2),
            "p90Ms": json_number(p90 / 1e6, 2),
            "p99Ms": json_number(p99 / 1e6, 2),
            "maxMs": json_number(worst / 1e6, 2),
            "minMs": json_number(best / 1e6, 2),
            "negative": negative,
            "fromStartP50Ms": json_number(percentile(from_start, 50) / 1e6, 2),
            "fromStartP99Ms": json_number(percentile(from_start, 99) / 1e6, 2),
            "cpuSeconds": cpu.summary(),
            "allDelivered": all_delivered,
            "targetsMet": met,
        }
    )
    if not all_delivered or errors:
        return 1
    return 1 if args.strict and not all(met.values()) else 0


if __name__ == "__main__":
    arguments = parse_args()
    sys.exit(run_main(lambda: main(arguments)))
