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

``--rate R`` is an open loop instead: R respond-async sends per second for ``--seconds``, each
started on schedule whatever the answers, while A's ``connector_outbox_pending`` (GET /metrics)
is sampled every 0.5 s. A closed-loop burst is accepted faster than A's outbox delivers it; at a
steady rate the outbox should keep up: at most 2 seconds' worth of messages pending when the
send phase ends, then drained and all at B soon after.

    python bench/messages.py                   # 10,000 messages, 32 senders
    python bench/messages.py --backlog         # ... B paused while sending: backlog ingest rate
    python bench/messages.py --count 2000 --concurrency 8
    python bench/messages.py --quick           # 300 messages, a few seconds
    python bench/messages.py --rate 400 --seconds 10   # steady respond-async load:
                                                       # does the outbox keep up?
    python bench/messages.py --count 2000 --profile /tmp/prof   # connectors under cProfile
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import math
import os
import pstats
import sys
import time
from collections import Counter
from collections.abc import Iterator
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
    Sent,
    TwoConnectors,
    check,
    client_session,
    format_ms,
    free_port,
    header_line,
    indent,
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

TARGET_SEND_RATE = 500.0
TARGET_INGEST_RATE = 3000.0
TARGET_P50_MS = 100.0
TARGET_ACCEPT_RATE = 1500.0  # Prefer: respond-async, 32 concurrent clients
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


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
    headers = message_headers(a.headers, prefer_async)
    todo = iter(seqs)
    results: list[Sent] = []

    async def sender(worker: int) -> None:
        for seq in todo:
            if time.monotonic() > deadline:
                return
            body = message_body(recipient, run_id, kind, seq, worker)
            results.append(await post_message(session, url, headers, body, seq))

    start_ns = time.time_ns()
    await asyncio.gather(*(sender(i) for i in range(concurrency)))
    end_ns = max((r.answer_ns for r in results), default=time.time_ns())
    return SendPhase(results, start_ns, end_ns)


@dataclass
class RatePhase(SendPhase):
    rate: float = 0.0
    schedule_seconds: float = 0.0  # first to last scheduled start
    start_lag_ns: list[int] | None = None  # how late each request started vs its schedule
    pending: list[tuple[float, int]] | None = None  # (seconds since start, outbox pending)


async def send_at_rate(
    session: aiohttp.ClientSession,
    a: Connector,
    recipient: str,
    run_id: str,
    rate: float,
    seconds: float,
    *,
    kind: str,
    metrics_session: aiohttp.ClientSession,
    sample_every: float = 0.5,
) -> RatePhase:
    """Open loop: start one respond-async POST every 1/``rate`` s for ``seconds``, each its own
    task, whatever the answers; sample A's outbox every ``sample_every`` s until the last answer.
    """
    url = f"{a.url}/api/v1/messages"
    headers = message_headers(a.headers, prefer_async=True)
    count = max(1, round(rate * seconds))
    results: list[Sent] = []
    lags: list[int] = []
    samples: list[tuple[float, int]] = []
    loop = asyncio.get_running_loop()

    async def one(seq: int, due_ns: int) -> None:
        lags.append(time.time_ns() - due_ns)
        body = message_body(recipient, run_id, kind, seq, 0)
        results.append(await post_message(session, url, headers, body, seq))

    async def sampler(t0: float) -> None:
        k = 0
        while True:
            samples.append((loop.time() - t0, await outbox_pending(metrics_session, a)))
            k += 1
            await asyncio.sleep(max(0.0, t0 + k * sample_every - loop.time()))

    tasks: list[asyncio.Task[None]] = []
    t0 = loop.time()
    start_ns = time.time_ns()
    sampling = asyncio.create_task(sampler(t0))
    try:
        for seq in range(count):
            offset = seq / rate
            delay = t0 + offset - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(seq, start_ns + int(offset * 1e9))))
            if sampling.done():  # a failed /metrics read: stop now, with its error
                sampling.result()
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
    end_ns = max((r.answer_ns for r in results), default=time.time_ns())
    return RatePhase(
        results,
        start_ns,
        end_ns,
        rate=rate,
        schedule_seconds=(count - 1) / rate,
        start_lag_ns=sorted(lags),
        pending=samples,
    )


async def outbox_pending(session: aiohttp.ClientSession, a: Connector) -> int:
    """``connector_outbox_pending`` from A's GET /metrics."""
    async with session.get(
        f"{a.url}/metrics", headers=a.headers, timeout=aiohttp.ClientTimeout(total=30)
    ) as resp:
        text = await resp.text()
        if resp.status != 200:
            raise BenchError(f"GET /metrics on {a.proc.name} answered {resp.status}: {text[:500]}")
    for line in text.splitlines():
        if line.startswith("connector_outbox_pending "):
            return int(float(line.split()[-1]))
    raise BenchError(f"no connector_outbox_pending in {a.proc.name}'s /metrics:\n{text[:1000]}")


async def wait_outbox_empty(
    session: aiohttp.ClientSession,
    a: Connector,
    cluster: Cluster,
    *,
    poll: float,
    stall_timeout: float,
    total_timeout: float,
) -> tuple[int, int]:
    """Poll A's outbox until it is empty (or stops shrinking for ``stall_timeout``).

    Returns (pending at the end, time.time_ns() of that reading).
    """
    start = last_progress = time.monotonic()
    lowest = None
    while True:
        cluster.check_alive()
        pending = await outbox_pending(session, a)
        seen_ns = time.time_ns()
        now = time.monotonic()
        if pending == 0:
            return 0, seen_ns
        if lowest is None or pending < lowest:
            lowest, last_progress = pending, now
        if now - last_progress > stall_timeout or now - start > total_timeout:
            log(f"giving up waiting for A's outbox: {pending} pending")
            return pending, seen_ns
        await asyncio.sleep(poll)


# --------------------------------------------------------------------------- baseline

# The least any server can do for a send: parse the JSON body and answer 202 with JSON. On
# uvloop when it is installed, as the connector runs, so that the ratio compares like with like.
_BARE_SERVER = """
import asyncio, sys
from aiohttp import web
try:
    import uvloop
    loop = uvloop.new_event_loop()
except ImportError:
    loop = asyncio.new_event_loop()

async def accept(request):
    body = await request.json()
    return web.json_response({"id": "MSG" + "0" * 17, "n": len(body)}, status=202)

app = web.Application()
app.router.add_post("/api/v1/messages", accept)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None, loop=loop)
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


def ours(items: list[dict[str, Any]], run_id: str, kind: str) -> list[dict[str, Any]]:
    out = []
    for item in items:
        content = item.get("content")
        if isinstance(content, dict) and content.get("bench") == run_id:
            if content.get("kind") == kind:
                out.append(item)
    return out


@dataclass
class Arrivals:
    """This run's messages of one kind at B, by seq (the first copy of each)."""

    items: dict[int, dict[str, Any]]
    received_ns: dict[int, int]  # B's receivedAt, ns since the epoch; -1 when unreadable
    duplicates: int  # further copies of a seq


def read_arrivals(incoming: list[dict[str, Any]], run_id: str, kind: str) -> Arrivals:
    """Sort B's incoming messages of this run and ``kind`` by seq."""
    items: dict[int, dict[str, Any]] = {}
    received_ns: dict[int, int] = {}
    duplicates = 0
    for item in ours(incoming, run_id, kind):
        seq = item["content"].get("seq")
        if not isinstance(seq, int):
            continue
        if seq in items:
            duplicates += 1
            continue
        items[seq] = item
        raw = item.get("receivedAt")
        try:
            received_ns[seq] = iso_to_ns(raw) if isinstance(raw, str) else -1
        except ValueError:
            received_ns[seq] = -1
    return Arrivals(items, received_ns, duplicates)


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
        total = await b.total_received(session)
        if total is not None:
            count = total - baseline
        else:
            count = len(ours(await b.incoming_messages(session, max_pages), run_id, kind))
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


async def wait_for_run(
    session: aiohttp.ClientSession,
    b: Connector,
    cluster: Cluster,
    args: argparse.Namespace,
    n: int,
    *,
    baseline: int,
    expected: int,
    run_id: str,
    kind: str = "timed",
) -> tuple[bool, int, float]:
    """:func:`wait_for_ingest` for the measured sends of an ``n``-message run: polls every
    ``--poll`` s, gives up after ``--stall-timeout`` s without progress (or 300 s, more for a
    large run)."""
    return await wait_for_ingest(
        session,
        b,
        cluster,
        baseline=baseline,
        expected=expected,
        run_id=run_id,
        kind=kind,
        poll=args.poll,
        stall_timeout=args.stall_timeout,
        total_timeout=max(300.0, n / 20),
    )


async def stop_and_read_b(
    session: aiohttp.ClientSession, b: Connector, cluster: Cluster, meters: Meters, n: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The end of a run: stop the meters, then B's sync status and every incoming message."""
    await meters.stop()
    sync_status: dict[str, Any] = await b.get_json(session, "/api/v1/account/sync")
    incoming = await b.incoming_messages(session, max_pages=n // 1000 + 50)
    cluster.check_alive()
    return sync_status, incoming


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
        "--rate",
        type=float,
        default=None,
        metavar="R",
        help="open loop: start R respond-async sends per second for --seconds, whatever the "
        "answers, and watch A's outbox (implies --prefer-async; --count is not used)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        metavar="S",
        help="duration of the --rate send phase (10)",
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
    if args.rate is not None:
        if args.rate <= 0 or args.seconds <= 0:
            parser.error("--rate and --seconds must be positive")
        if args.backlog:
            parser.error("--backlog does not go with --rate")
        args.prefer_async = True
    return args


async def start_and_warm_up(
    session: aiohttp.ClientSession, cluster: Cluster, args: argparse.Namespace, run_id: str
) -> tuple[TwoConnectors, int, list[Sent]]:
    """Backbone, connectors A and B, then ``--warmup`` untimed sends A -> B, all awaited at B.

    Returns (the processes, B's total received after the warm-up, warm-up errors).
    """
    pair = await start_two_connectors(session, cluster)
    a, b, address_b = pair.a, pair.b, pair.address_b
    log(f"A = {pair.address_a}, B = {address_b}, run {run_id}")

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
        baseline = (await b.total_received(session)) or 0
    return pair, baseline, warm_errors


@dataclass
class Meters:
    """CPU use of A, B and the backbone, and A's and B's RSS sampled every 0.1 s."""

    cpu: CpuMeter
    rss: dict[str, RssSampler]

    @classmethod
    def start(cls, pair: TwoConnectors) -> Meters:
        rss = {
            "A": RssSampler(pair.a.proc.pid, interval=0.1),
            "B": RssSampler(pair.b.proc.pid, interval=0.1),
        }
        for sampler in rss.values():
            sampler.start()
        cpu = pair.cpu_meter()
        cpu.start()
        return cls(cpu, rss)

    async def stop(self) -> None:
        self.cpu.stop()
        for sampler in self.rss.values():
            await sampler.stop()

    def rows(self, wall: float) -> list[Row]:
        return [
            *self.cpu.rows(wall),
            *(
                Row(
                    f"connector {name} peak RSS growth",
                    f"{s.growth_mib:.1f} MiB (from {s.rss_before_kib / 1024:.0f} MiB)",
                )
                for name, s in self.rss.items()
            ),
        ]


@contextlib.contextmanager
def bench_cluster(args: argparse.Namespace) -> Iterator[Cluster]:
    """The run's processes (see ``Cluster``); with ``--profile``, once they have stopped and
    written their profiles, the top functions of each."""
    try:
        with Cluster.create("bench-messages-", keep=args.keep, profile_dir=args.profile) as cluster:
            yield cluster
    finally:
        if args.profile:
            print_profiles(args.profile)


def received_rows(
    received: int, accepted: int, complete: bool, waited: float, total_received_b: Any
) -> list[Row]:
    """How many of the run's accepted messages B holds, and B's own received counter."""
    return [
        Row(
            "received at B (this run)",
            f"{received:,} of {accepted:,} accepted"
            + ("" if complete else f" (gave up after {waited:.0f} s)"),
        ),
        Row("B total_received (incl. warm-up)", f"{total_received_b}"),
    ]


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


async def main(args: argparse.Namespace) -> int:
    info = machine_info()
    print(header_line(info), flush=True)
    if args.rate is not None:
        return await main_rate(args, info)
    run_id = os.urandom(6).hex()
    n = args.count
    send_budget = max(120.0, n / 20)  # the send phase stops at >= 20 messages/s
    with bench_cluster(args) as cluster:
        async with client_session(limit=args.concurrency + 8) as session:
            pair, baseline, warm_errors = await start_and_warm_up(session, cluster, args, run_id)
            a, b, address_b = pair.a, pair.b, pair.address_b
            meters = Meters.start(pair)
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

            complete, _arrived, waited = await wait_for_run(
                session, b, cluster, args, n, baseline=baseline, expected=accepted, run_id=run_id
            )
            wall = (time.time_ns() - phase.start_ns) / 1e9
            sync_status, incoming = await stop_and_read_b(session, b, cluster, meters, n)
            bare_rate = None
            if args.prefer_async:
                cluster.close()  # the machine to itself, as the connector had it
                log("baseline: a bare aiohttp JSON POST handler, same client")
                bare_rate = await bare_aiohttp_rate(session, n, args.concurrency, address_b)

    # ------------------------------------------------------------------ analysis
    sent_by_seq = {r.seq: r for r in phase.results}
    arrived = read_arrivals(incoming, run_id, "timed")
    duplicates = arrived.duplicates
    not_received_status = Counter(
        str(item.get("status"))
        for item in arrived.items.values()
        if item.get("status") != "received"
    )
    # a message without a readable receivedAt counts as missing here
    received_ns = {seq: ns for seq, ns in arrived.received_ns.items() if ns >= 0}
    same_id = sum(
        1
        for seq in received_ns
        if seq in sent_by_seq and sent_by_seq[seq].message_id == arrived.items[seq].get("id")
    )

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
            *(
                ("n/a: respond-async", "")
                if args.prefer_async
                else (f">= {TARGET_SEND_RATE:,.0f} /s", check(send_rate >= TARGET_SEND_RATE))
            ),
        ),
        Row(
            "all answers/s" + (" (respond-async accepted/s)" if args.prefer_async else ""),
            f"{answer_rate:,.0f} /s",
            *(
                (f">= {TARGET_ACCEPT_RATE:,.0f} /s", check(answer_rate >= TARGET_ACCEPT_RATE))
                if args.prefer_async
                else ()
            ),
        ),
        *(
            [
                Row("bare aiohttp JSON POST handler (same run)", f"{bare_rate:,.0f} /s"),
                Row("connector accepted / bare aiohttp", f"{answer_rate / bare_rate:.1%}"),
            ]
            if bare_rate
            else []
        ),
        *received_rows(len(received_ns), accepted, complete, waited, total_received_b),
        Row(
            "missing / duplicates / not 'received'",
            f"{len(missing):,} / {duplicates:,} / {sum(not_received_status.values()):,}",
        ),
        Row("same MSG id at A and B", f"{same_id:,} of {len(received_ns):,}"),
        Row("arrival span at B (first..last receivedAt)", f"{span:.2f} s"),
        Row(
            "ingest rate (n / span)",
            f"{ingest_rate:,.0f} /s",
            *(
                ("n/a: respond-async", "")
                if args.prefer_async
                else (
                    f">= {TARGET_INGEST_RATE:,.0f} /s",
                    check(ingest_rate >= TARGET_INGEST_RATE),
                )
            ),
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
            format_ms(p50),
            *(
                (
                    f"<= {TARGET_P50_MS:.0f} ms",
                    check(bool(latencies) and p50 <= TARGET_P50_MS * 1e6),
                )
                if resumed_ns is None and not args.prefer_async
                else ("n/a: " + ("respond-async" if args.prefer_async else "backlog mode"), "")
            ),
        ),
        Row("latency p90", format_ms(percentile(latencies, 90))),
        Row("latency p99", format_ms(percentile(latencies, 99))),
        Row("latency max", format_ms(latencies[-1] if latencies else float("nan"))),
        Row("latency min", format_ms(latencies[0] if latencies else float("nan"))),
        Row(
            "latency from request start p50 / p99",
            f"{format_ms(percentile(from_start, 50))} / {format_ms(percentile(from_start, 99))}",
        ),
        *meters.rows(wall),
    ]
    print_table(
        f"bench/messages.py — {n:,} messages A -> B, {args.concurrency} senders "
        f"(wall {wall:.1f} s incl. waiting for B)",
        rows,
    )
    print_send_errors(errors, warm_errors)
    if not_received_status:
        print(f"incoming status other than 'received': {dict(not_received_status)}")
    if missing:
        print(f"missing seqs (first 20): {missing[:20]}")
    if sync_status.get("lastError"):
        print(f"B sync lastError: {sync_status.get('lastError')}")

    met = (
        {"acceptedRate": answer_rate >= TARGET_ACCEPT_RATE}
        if args.prefer_async
        else {
            "sendRate": send_rate >= TARGET_SEND_RATE,
            "ingestRate": ingest_rate >= TARGET_INGEST_RATE,
            "p50": bool(latencies) and p50 <= TARGET_P50_MS * 1e6,
        }
    )
    rows_ok = not missing and not duplicates and not errors and not not_received_status
    print_summary(
        {
            **summary_head("messages", info),
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
            "cpuSeconds": meters.cpu.summary(),
            "allDelivered": rows_ok,
            "targetsMet": met,
        }
    )
    if not rows_ok:
        return 1
    return 1 if args.strict and not all(met.values()) else 0


async def main_rate(args: argparse.Namespace, info: dict[str, Any]) -> int:
    """``--rate``: open-loop respond-async sends at a steady rate; does A's outbox keep up?"""
    run_id = os.urandom(6).hex()
    rate, seconds = float(args.rate), float(args.seconds)
    n = max(1, round(rate * seconds))
    kind = "rate"
    with bench_cluster(args) as cluster:
        # An open loop does not wait for answers: leave room for about a second of requests in
        # flight, so that a slow answer queues at the connector rather than in this client.
        async with (
            client_session(limit=max(args.concurrency, int(rate)) + 8) as session,
            client_session(limit=4) as metrics_session,
        ):
            pair, baseline, warm_errors = await start_and_warm_up(session, cluster, args, run_id)
            a, b, address_b = pair.a, pair.b, pair.address_b
            meters = Meters.start(pair)
            log(
                f"open loop: {n} messages A -> B at {rate:g}/s for {seconds:g} s "
                "(Prefer: respond-async), A's outbox sampled every 0.5 s"
            )
            phase = await send_at_rate(
                session,
                a,
                address_b,
                run_id,
                rate,
                seconds,
                kind=kind,
                metrics_session=metrics_session,
            )
            pending_at_end = await outbox_pending(metrics_session, a)
            statuses = phase.by_status()
            accepted = statuses[201] + statuses[202]
            log(
                f"send phase done in {phase.seconds:.2f} s: {dict(statuses)}; "
                f"outbox pending {pending_at_end}"
            )
            cluster.check_alive()
            (outbox_left, empty_ns), (complete, _arrived, waited) = await asyncio.gather(
                wait_outbox_empty(
                    metrics_session,
                    a,
                    cluster,
                    poll=0.05,
                    stall_timeout=args.stall_timeout,
                    total_timeout=max(300.0, n / 20),
                ),
                wait_for_run(
                    session,
                    b,
                    cluster,
                    args,
                    n,
                    baseline=baseline,
                    expected=accepted,
                    run_id=run_id,
                    kind=kind,
                ),
            )
            wall = (time.time_ns() - phase.start_ns) / 1e9
            sync_status, incoming = await stop_and_read_b(session, b, cluster, meters, n)

    # ------------------------------------------------------------------ analysis
    accepted_seqs = {r.seq for r in phase.results if r.status in (201, 202)}
    arrived = read_arrivals(incoming, run_id, kind)
    received_ns, duplicates = arrived.received_ns, arrived.duplicates
    missing = sorted(accepted_seqs - received_ns.keys())
    unexpected = len(received_ns.keys() - accepted_seqs)  # arrived, but its send got no 201/202
    all_delivered = not missing and not unexpected and not duplicates
    arrivals = [ns for ns in received_ns.values() if ns >= 0]
    to_all_received = (
        (max(arrivals) - phase.end_ns) / 1e9 if arrivals and complete and not missing else math.nan
    )
    drain = (empty_ns - phase.end_ns) / 1e9 if outbox_left == 0 else math.nan

    errors = [r for r in phase.results if r.status not in (201, 202)]
    latencies = sorted(r.answer_ns - r.start_ns for r in phase.results if r.status in (201, 202))
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    lags = phase.start_lag_ns or []
    samples = [pending for _, pending in phase.pending or []]
    pending_max = max([*samples, pending_at_end])
    kept_up = pending_at_end <= rate * 2
    accepted_rate = accepted / phase.seconds if phase.seconds > 0 else math.nan
    total_received_b = sync_status.get("totalReceived", sync_status.get("total_received"))

    rows = [
        Row("warm-up sends (untimed) / errors", f"{args.warmup} / {len(warm_errors)}"),
        Row(
            "offered rate (open loop, Prefer: respond-async)",
            f"{rate:,.0f} /s: {len(phase.results):,} requests over {seconds:g} s",
        ),
        Row(
            "bench client: request start behind schedule p99 / max",
            f"{format_ms(percentile(lags, 99))} / {format_ms(lags[-1] if lags else math.nan)}",
        ),
        Row("send phase (first request .. last answer)", f"{phase.seconds:.2f} s"),
        Row(
            "answers 202 queued / 201 sent / errors",
            f"{statuses[202]:,} / {statuses[201]:,} / {len(errors):,}",
        ),
        Row("accepted rate (201+202 answers / send phase)", f"{accepted_rate:,.0f} /s"),
        Row("202 answer latency p50", format_ms(p50)),
        Row("202 answer latency p99", format_ms(p99)),
        Row("outbox pending: max during send phase", f"{pending_max:,}"),
        Row("outbox pending: at end of send phase (last answer)", f"{pending_at_end:,}"),
        Row(
            "outbox kept up (pending at end <= 2 s of messages)",
            "yes" if kept_up else "no",
            f"<= {rate * 2:,.0f}",
            check(kept_up),
        ),
        *received_rows(len(received_ns), accepted, complete, waited, total_received_b),
        Row(
            "missing / duplicates / not accepted",
            f"{len(missing):,} / {duplicates:,} / {unexpected:,}",
        ),
        Row(
            "all delivered (received at B == accepted, no duplicates)",
            "yes" if all_delivered else "no",
            "yes",
            check(all_delivered),
        ),
        Row(
            "outbox empty after last answer",
            f"{drain:.2f} s" if outbox_left == 0 else f"no: {outbox_left:,} still pending",
        ),
        Row("all received at B after last answer (receivedAt)", f"{to_all_received:.2f} s"),
        *meters.rows(wall),
    ]
    print_table(
        f"bench/messages.py — open loop {rate:g} messages/s for {seconds:g} s A -> B, "
        f"Prefer: respond-async (wall {wall:.1f} s incl. draining)",
        rows,
    )
    print(
        "outbox pending every 0.5 s of the send phase: "
        + " ".join(str(p) for p in samples)
        + f" | at the last answer: {pending_at_end}"
    )
    print_send_errors(errors, warm_errors)
    if missing:
        print(f"missing seqs (first 20): {missing[:20]}")
    if sync_status.get("lastError"):
        print(f"B sync lastError: {sync_status.get('lastError')}")

    print_summary(
        {
            **summary_head("messages", info, mode="rate"),
            "rate": rate,
            "seconds": seconds,
            "offered": len(phase.results),
            "accepted": accepted,
            "errors": len(errors),
            "warmupErrors": len(warm_errors),
            "sendSeconds": round(phase.seconds, 3),
            "acceptedPerS": json_number(accepted_rate, 1),
            "p50Ms": json_number(p50 / 1e6, 2),
            "p99Ms": json_number(p99 / 1e6, 2),
            "pendingMax": pending_max,
            "pendingAtEnd": pending_at_end,
            "pendingSamples": samples,
            "keptUp": kept_up,
            "receivedAtB": len(received_ns),
            "missing": len(missing),
            "duplicates": duplicates,
            "allDelivered": all_delivered,
            "drainSeconds": json_number(drain, 3),
            "allReceivedSeconds": json_number(to_all_received, 3),
            "cpuSeconds": meters.cpu.summary(),
        }
    )
    if not all_delivered or errors:
        return 1
    return 1 if args.strict and not kept_up else 0


if __name__ == "__main__":
    arguments = parse_args()
    sys.exit(run_main(lambda: main(arguments)))
