"""Message benchmark: send rate at connector A, ingest rate and end-to-end latency at connector B.

Starts a backbone and two connectors A and B (separate processes, 127.0.0.1, temp dirs; B keeps
a long-poll open to the backbone). ``--concurrency`` client tasks POST small JSON messages A -> B
and record, for each, the wall-clock time the 201/202 answer arrived. Then it waits until B holds
them all and reads B's stored ``receivedAt`` timestamps:

- send rate     = 201 answers / duration of the send phase
- ingest rate   = messages / (last receivedAt - first receivedAt) at B
- latency       = B's receivedAt - the client's answer time for that message (same clock)

A answers only after the platform took the message, and B may have ingested it by then, so that
latency can be negative; "latency from request start" (receivedAt - request start) is printed too
as an upper bound. While A is the bottleneck, B ingests as fast as A sends; ``--backlog`` pauses B
(SIGSTOP) during the send phase and resumes it afterwards, so the ingest rate is B's own.

    python bench/messages.py                   # 10,000 messages, 32 senders
    python bench/messages.py --backlog         # ... B paused while sending: backlog ingest rate
    python bench/messages.py --count 2000 --concurrency 8
    python bench/messages.py --quick           # 300 messages, a few seconds
    python bench/messages.py --count 2000 --profile /tmp/prof   # connectors under cProfile
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import pstats
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    BenchError,
    Cluster,
    Connector,
    CpuMeter,
    Row,
    RssSampler,
    check,
    client_session,
    free_port,
    header_line,
    indent,
    log,
    machine_info,
    percentile,
    print_summary,
    print_table,
    run_main,
)

TARGET_SEND_RATE = 500.0
TARGET_INGEST_RATE = 3000.0
TARGET_P50_MS = 100.0
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass
class Sent:
    seq: int
    status: int  # HTTP status, 0 for a transport error
    start_ns: int
    answer_ns: int
    message_id: str | None = None
    error: str | None = None


@dataclass
class SendPhase:
    results: list[Sent]
    start_ns: int
    end_ns: int

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9

    def by_status(self) -> Counter[int]:
        return Counter(r.status for r in self.results)


def iso_to_ns(value: str) -> int:
    when = dt.datetime.fromisoformat(value)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return (when - EPOCH) // dt.timedelta(microseconds=1) * 1000


# --------------------------------------------------------------------------- sending


async def send_all(
    session: aiohttp.ClientSession,
    a: Connector,
    recipient: str,
    run_id: str,
    seqs: range,
    concurrency: int,
    deadline: float,
    *,
    kind: str,
    prefer_async: bool = False,
) -> SendPhase:
    """POST one message per seq from ``concurrency`` tasks; stop at ``deadline`` (monotonic)."""
    url = f"{a.url}/api/v1/messages"
    headers = {**a.headers, "Content-Type": "application/json"}
    if prefer_async:
        headers["Prefer"] = "respond-async"
    todo = iter(seqs)
    results: list[Sent] = []
    request_timeout = aiohttp.ClientTimeout(total=60)

    async def sender(worker: int) -> None:
        for seq in todo:
            if time.monotonic() > deadline:
                return
            body = json.dumps(
                {
                    "recipients": [recipient],
                    "content": {"bench": run_id, "kind": kind, "seq": seq, "worker": worker},
                },
                separators=(",", ":"),
            ).encode()
            start = time.time_ns()
            try:
                async with session.post(
                    url, data=body, headers=headers, timeout=request_timeout
                ) as resp:
                    raw = await resp.read()
                    answer = time.time_ns()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                results.append(
                    Sent(seq, 0, start, time.time_ns(), error=f"{type(exc).__name__}: {exc}")
                )
                continue
            sent = Sent(seq, status, start, answer)
            if status in (201, 202):
                try:
                    sent.message_id = str(json.loads(raw)["id"])
                except (ValueError, KeyError, TypeError):
                    sent.error = f"{status} without a message id: {raw[:300]!r}"
            else:
                sent.error = f"{status}: {raw[:500].decode(errors='replace')}"
            results.append(sent)

    start_ns = time.time_ns()
    await asyncio.gather(*(sender(i) for i in range(concurrency)))
    end_ns = max((r.answer_ns for r in results), default=time.time_ns())
    return SendPhase(results, start_ns, end_ns)


# --------------------------------------------------------------------------- baseline

# The least any server can do for a send: parse the JSON body and answer 202 with JSON.
_BARE_SERVER = """
import sys
from aiohttp import web

async def accept(request):
    body = await request.json()
    return web.json_response({"id": "MSG" + "0" * 17, "n": len(body)}, status=202)

app = web.Application()
app.router.add_post("/api/v1/messages", accept)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


@dataclass
class _BareTarget:
    url: str
    headers: dict[str, str]


async def bare_aiohttp_rate(
    session: aiohttp.ClientSession, count: int, concurrency: int, recipient: str
) -> float:
    """Answers/s of a bare aiohttp JSON POST handler, driven by the same client code."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", _BARE_SERVER, str(port))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError("the bare aiohttp server did not start") from None
                await asyncio.sleep(0.1)
        target = _BareTarget(f"http://127.0.0.1:{port}", {})
        phase = await send_all(
            session,
            target,  # type: ignore[arg-type]
            recipient,
            "bare",
            range(count),
            concurrency,
            time.monotonic() + 120,
            kind="bare",
        )
        answered = sum(1 for r in phase.results if r.status == 202)
        return answered / phase.seconds if phase.seconds else 0.0
    finally:
        process.terminate()
        await process.wait()


# --------------------------------------------------------------------------- receiving


async def total_received(session: aiohttp.ClientSession, b: Connector) -> int | None:
    status = await b.get_json(session, "/api/v1/account/sync")
    for key in ("totalReceived", "total_received"):
        if isinstance(status.get(key), int):
            return int(status[key])
    return None


async def list_incoming(
    session: aiohttp.ClientSession, b: Connector, max_pages: int
) -> list[dict[str, Any]]:
    """Every incoming message at B (pages of 1000, bounded)."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(max_pages):
        params = {"direction": "incoming", "limit": "1000"}
        if cursor:
            params["cursor"] = cursor
        page = await b.get_json(session, "/api/v1/messages", time_limit=120, **params)
        items.extend(page.get("items", []))
        cursor = page.get("nextCursor")
        if not cursor:
            return items
    raise BenchError(f"GET /api/v1/messages did not end after {max_pages} pages (cursor loop?)")


def ours(items: list[dict[str, Any]], run_id: str, kind: str) -> list[dict[str, Any]]:
    out = []
    for item in items:
        content = item.get("content")
        if isinstance(content, dict) and content.get("bench") == run_id:
            if content.get("kind") == kind:
                out.append(item)
    return out


async def wait_for_ingest(
    session: aiohttp.ClientSession,
    b: Connector,
    cluster: Cluster,
    *,
    baseline: int,
    expected: int,
    run_id: str,
    kind: str,
    poll: float,
    stall_timeout: float,
    total_timeout: float,
) -> tuple[bool, int, float]:
    """Poll B until ``expected`` new messages are in (or no progress for ``stall_timeout``).

    Uses the sync status's total-received counter; without one, counts the listed messages.
    Returns (all arrived, how many arrived, seconds waited).
    """
    start = time.monotonic()
    last_progress, last_count = start, -1
    max_pages = expected // 1000 + 50
    count = 0
    while True:
        cluster.check_alive()
        total = await total_received(session, b)
        if total is not None:
            count = total - baseline
        else:
            count = len(ours(await list_incoming(session, b, max_pages), run_id, kind))
        now = time.monotonic()
        if count >= expected:
            return True, count, now - start
        if count != last_count:
            last_count, last_progress = count, now
            log(f"B has {count}/{expected}")
        if now - last_progress > stall_timeout or now - start > total_timeout:
            log(f"giving up waiting: B has {count}/{expected}")
            return False, count, now - start
        await asyncio.sleep(poll)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="messages (10,000)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent senders (32)")
    parser.add_argument(
        "--warmup", type=int, default=50, help="untimed messages sent first and awaited (50)"
    )
    parser.add_argument(
        "--prefer-async", action="store_true", help="send with 'Prefer: respond-async' (202s)"
    )
    parser.add_argument(
        "--backlog",
        action="store_true",
        help="pause B (SIGSTOP) while sending, then resume it: ingest rate of a backlog",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="run the connectors under cProfile, write DIR/*.prof and print the top functions",
    )
    parser.add_argument("--quick", action="store_true", help="300 messages smoke run")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between B polls")
    parser.add_argument(
        "--stall-timeout", type=float, default=60.0, help="give up after this long w/o progress"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and logs")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.quick:
        args.count = min(args.count, 300)
        args.warmup = min(args.warmup, 10)
    if args.count <= 0 or args.concurrency <= 0 or args.warmup < 0:
        parser.error("--count and --concurrency must be positive, --warmup not negative")
    return args


def print_profiles(directory: Path, top: int = 25) -> None:
    for path in sorted(directory.glob("*.prof")):
        try:
            stats = pstats.Stats(str(path))
        except (OSError, TypeError, ValueError) as exc:
            log(f"cannot read {path}: {exc!r}")
            continue
        for order in ("tottime", "cumulative"):
            print(f"\n===== {path.name}: top {top} by {order} =====")
            stats.sort_stats(order).print_stats(top)


def ms(ns: float) -> str:
    return f"{ns / 1e6:,.1f} ms"


async def main(args: argparse.Namespace) -> int:
    info = machine_info()
    print(header_line(info), flush=True)
    run_id = os.urandom(6).hex()
    n = args.count
    send_budget = max(120.0, n / 20)  # the send phase stops at >= 20 messages/s
    cluster = Cluster.create("bench-messages-", keep=args.keep, profile_dir=args.profile)
    try:
        async with client_session(limit=args.concurrency + 8) as session:
            backbone = cluster.start_backbone()
            await backbone.wait_ready(session)
            a = cluster.start_connector("a", backbone.url, long_poll=True)
            b = cluster.start_connector("b", backbone.url, long_poll=True)
            await a.wait_ready(session)
            await b.wait_ready(session)
            address_a = await a.address(session)
            address_b = await b.address(session)
            log(f"A = {address_a}, B = {address_b}, run {run_id}")

            baseline = 0
            warm_errors: list[Sent] = []
            if args.warmup:
                log(f"warm-up: {args.warmup} messages")
                warm = await send_all(
                    session,
                    a,
                    address_b,
                    run_id,
                    range(args.warmup),
                    args.concurrency,
                    time.monotonic() + 120,
                    kind="warmup",
                    prefer_async=args.prefer_async,
                )
                warm_errors = [r for r in warm.results if r.status not in (201, 202)]
                warm_accepted = len(warm.results) - len(warm_errors)
                if warm_errors:
                    cluster.check_alive()
                    log(
                        f"WARNING warm-up: {len(warm_errors)} of {args.warmup} sends failed, "
                        f"first: {warm_errors[0].error}\nconnector A output:\n"
                        f"{indent(a.proc.tail(60))}"
                    )
                if not warm_accepted:
                    raise BenchError("warm-up: every send failed (see above)")
                ok, got, _ = await wait_for_ingest(
                    session,
                    b,
                    cluster,
                    baseline=0,
                    expected=warm_accepted,
                    run_id=run_id,
                    kind="warmup",
                    poll=0.2,
                    stall_timeout=60,
                    total_timeout=120,
                )
                if not ok:
                    raise BenchError(
                        f"warm-up: B received only {got} of {warm_accepted} messages in time\n"
                        f"connector B output:\n{b.proc.tail(40)}\n"
                        f"connector A output:\n{a.proc.tail(20)}"
                    )
                baseline = (await total_received(session, b)) or 0

            samplers = {
                "A": RssSampler(a.proc.pid, interval=0.1),
                "B": RssSampler(b.proc.pid, interval=0.1),
            }
            for sampler in samplers.values():
                sampler.start()
            cpu = CpuMeter(
                {
                    "connector A": a.proc.pid,
                    "connector B": b.proc.pid,
                    "backbone": backbone.proc.pid,
                }
            )
            cpu.start()
            if args.backlog:
                log("backlog mode: B paused (SIGSTOP) during the send phase")
                b.proc.pause()
            log(f"send {n} messages A -> B with {args.concurrency} senders")
            phase = await send_all(
                session,
                a,
                address_b,
                run_id,
                range(n),
                args.concurrency,
                time.monotonic() + send_budget,
                kind="timed",
                prefer_async=args.prefer_async,
            )
            statuses = phase.by_status()
            accepted = statuses[201] + statuses[202]
            log(f"send phase done in {phase.seconds:.2f} s: {dict(statuses)}")
            cluster.check_alive()
            resumed_ns = None
            if args.backlog:
                log("resume B (SIGCONT)")
                resumed_ns = time.time_ns()
                b.proc.resume()

            complete, _arrived, waited = await wait_for_ingest(
                session,
                b,
                cluster,
                baseline=baseline,
                expected=accepted,
                run_id=run_id,
                kind="timed",
                poll=args.poll,
                stall_timeout=args.stall_timeout,
                total_timeout=max(300.0, n / 20),
            )
            wall = (time.time_ns() - phase.start_ns) / 1e9
            cpu.stop()
            for sampler in samplers.values():
                await sampler.stop()
            sync_status = await b.get_json(session, "/api/v1/account/sync")
            incoming = await list_incoming(session, b, max_pages=n // 1000 + 50)
            cluster.check_alive()
            bare_rate = None
            if args.prefer_async:
                cluster.close()  # the machine to itself, as the connector had it
                log("baseline: a bare aiohttp JSON POST handler, same client")
                bare_rate = await bare_aiohttp_rate(session, n, args.concurrency, address_b)
    except BaseException:
        cluster.keep = True  # keep the logs of a failed run
        raise
    finally:
        cluster.close()
        if args.profile:
            print_profiles(args.profile)

    # ------------------------------------------------------------------ analysis
    timed = ours(incoming, run_id, "timed")
    sent_by_seq = {r.seq: r for r in phase.results}
    received_ns: dict[int, int] = {}
    duplicates = 0
    not_received_status: Counter[str] = Counter()
    same_id = 0
    bad_timestamps = 0
    for item in timed:
        seq = item["content"].get("seq")
        if not isinstance(seq, int):
            continue
        if seq in received_ns:
            duplicates += 1
            continue
        if item.get("status") != "received":
            not_received_status[str(item.get("status"))] += 1
        raw = item.get("receivedAt")
        try:
            received_ns[seq] = iso_to_ns(raw) if isinstance(raw, str) else -1
        except ValueError:
            received_ns[seq] = -1
        if received_ns[seq] < 0:
            bad_timestamps += 1
            del received_ns[seq]
            continue
        sent = sent_by_seq.get(seq)
        if sent is not None and sent.message_id == item.get("id"):
            same_id += 1

    latencies = sorted(
        received_ns[seq] - r.answer_ns
        for seq, r in sent_by_seq.items()
        if seq in received_ns and r.status in (201, 202)
    )
    from_start = sorted(
        received_ns[seq] - r.start_ns
        for seq, r in sent_by_seq.items()
        if seq in received_ns and r.status in (201, 202)
    )
    missing = sorted(
        seq for seq, r in sent_by_seq.items() if r.status in (201, 202) and seq not in received_ns
    )
    arrival = sorted(received_ns.values())
    span = (arrival[-1] - arrival[0]) / 1e9 if len(arrival) > 1 else 0.0
    ingest_rate = len(arrival) / span if span > 0 else float("nan")
    send_rate = statuses[201] / phase.seconds if phase.seconds > 0 else float("nan")
    answer_rate = len(phase.results) / phase.seconds if phase.seconds > 0 else float("nan")
    lag_after_last_answer = (arrival[-1] - phase.end_ns) / 1e9 if arrival else float("nan")
    drain = (arrival[-1] - resumed_ns) / 1e9 if arrival and resumed_ns is not None else float("nan")
    errors = [r for r in phase.results if r.status not in (201, 202)]
    error_kinds = Counter((r.error or "")[:160] for r in errors)
    total_received_b = sync_status.get("totalReceived", sync_status.get("total_received"))
    p50 = percentile(latencies, 50)

    rows = [
        Row("warm-up sends (untimed) / errors", f"{args.warmup} / {len(warm_errors)}"),
        Row("messages sent (timed)", f"{len(phase.results):,} of {n:,}"),
        Row(
            "concurrency",
            f"{args.concurrency}" + (" (Prefer: respond-async)" if args.prefer_async else ""),
        ),
        Row("send phase", f"{phase.seconds:.2f} s"),
        Row(
            "answers 201 sent / 202 queued / errors",
            f"{statuses[201]:,} / {statuses[202]:,} / {len(errors):,}",
        ),
        Row(
            "send rate (201 answers/s)",
            f"{send_rate:,.0f} /s",
            f">= {TARGET_SEND_RATE:,.0f} /s",
            check(send_rate >= TARGET_SEND_RATE),
        ),
        Row("all answers/s", f"{answer_rate:,.0f} /s"),
        *(
            [
                Row("bare aiohttp JSON POST handler (same run)", f"{bare_rate:,.0f} /s"),
                Row("connector accepted / bare aiohttp", f"{answer_rate / bare_rate:.1%}"),
            ]
            if bare_rate
            else []
        ),
        Row(
            "received at B (this run)",
            f"{len(received_ns):,} of {accepted:,} accepted"
            + ("" if complete else f" (gave up after {waited:.0f} s)"),
        ),
        Row("B total_received (incl. warm-up)", f"{total_received_b}"),
        Row(
            "missing / duplicates / not 'received'",
            f"{len(missing):,} / {duplicates:,} / {sum(not_received_status.values()):,}",
        ),
        Row("same MSG id at A and B", f"{same_id:,} of {len(received_ns):,}"),
        Row("arrival span at B (first..last receivedAt)", f"{span:.2f} s"),
        Row(
            "ingest rate (n / span)",
            f"{ingest_rate:,.0f} /s",
            f">= {TARGET_INGEST_RATE:,.0f} /s",
            check(ingest_rate >= TARGET_INGEST_RATE),
        ),
        Row("last arrival after last send answer", f"{lag_after_last_answer:.2f} s"),
        *(
            [
                Row("backlog mode: B paused while sending", "yes"),
                Row("backlog drained (resume -> last receivedAt)", f"{drain:.2f} s"),
                Row("  -> drain rate (n / drain)", f"{len(arrival) / drain:,.0f} /s"),
            ]
            if resumed_ns is not None
            else []
        ),
        Row(
            "latency p50 (receivedAt - answer)",
            ms(p50),
            f"<= {TARGET_P50_MS:.0f} ms" if resumed_ns is None else "n/a: backlog mode",
            check(bool(latencies) and p50 <= TARGET_P50_MS * 1e6) if resumed_ns is None else "",
        ),
        Row("latency p90", ms(percentile(latencies, 90))),
        Row("latency p99", ms(percentile(latencies, 99))),
        Row("latency max", ms(latencies[-1] if latencies else float("nan"))),
        Row("latency min", ms(latencies[0] if latencies else float("nan"))),
        Row(
            "latency from request start p50 / p99",
            f"{ms(percentile(from_start, 50))} / {ms(percentile(from_start, 99))}",
        ),
        *cpu.rows(wall),
        *(
            Row(
                f"connector {name} peak RSS growth",
                f"{s.growth_mib:.1f} MiB (from {s.rss_before_kib / 1024:.0f} MiB)",
            )
            for name, s in samplers.items()
        ),
    ]
    print_table(
        f"bench/messages.py — {n:,} messages A -> B, {args.concurrency} senders "
        f"(wall {wall:.1f} s incl. waiting for B)",
        rows,
    )
    if warm_errors:
        print("warm-up send errors:")
        for text, count in Counter((r.error or "")[:160] for r in warm_errors).most_common(5):
            print(f"  {count:>6} x {text}")
    if error_kinds:
        print("send errors (most common first):")
        for text, count in error_kinds.most_common(5):
            print(f"  {count:>6} x {text}")
    if not_received_status:
        print(f"incoming status other than 'received': {dict(not_received_status)}")
    if missing:
        print(f"missing seqs (first 20): {missing[:20]}")
    if sync_status.get("lastError"):
        print(f"B sync lastError: {sync_status.get('lastError')}")

    met = {
        "sendRate": send_rate >= TARGET_SEND_RATE,
        "ingestRate": ingest_rate >= TARGET_INGEST_RATE,
        "p50": bool(latencies) and p50 <= TARGET_P50_MS * 1e6,
    }
    rows_ok = not missing and not duplicates and not errors and not not_received_status
    print_summary(
        {
            "bench": "messages",
            **{k: info[k] for k in ("date", "host", "cpu", "cores", "python", "commit")},
            "count": n,
            "concurrency": args.concurrency,
            "preferAsync": args.prefer_async,
            "bareAiohttpPerS": round(bare_rate, 1) if bare_rate else None,
            "backlog": args.backlog,
            "sendSeconds": round(phase.seconds, 3),
            "sent201": statuses[201],
            "queued202": statuses[202],
            "errors": len(errors),
            "warmupErrors": len(warm_errors),
            "sendRatePerS": round(send_rate, 1),
            "receivedAtB": len(received_ns),
            "missing": len(missing),
            "duplicates": duplicates,
            "bTotalReceived": total_received_b,
            "arrivalSpanSeconds": round(span, 3),
            "ingestRatePerS": round(ingest_rate, 1),
            "latencyMs": {
                p: round(percentile(latencies, q) / 1e6, 2)
                for p, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
            },
            "cpuSeconds": {k: round(v, 2) for k, v in cpu.used.items()},
            "allDelivered": rows_ok,
            "targetsMet": met,
        }
    )
    if not rows_ok:
        return 1
    return 1 if args.strict and not all(met.values()) else 0


if __name__ == "__main__":
    arguments = parse_args()
    sys.exit(run_main(lambda: main(arguments)))
