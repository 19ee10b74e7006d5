"""Correlate-mode benchmark (issue 14): A's ``"mode": "correlate"`` send answered 200 once
connector B pushed the message to a SpiffWorkflow engine and B's correlation receipt came back.

Starts a backbone and two connectors A and B (separate processes, 127.0.0.1, temp dirs, SQLite,
both keeping a long-poll open to the backbone). The engine is the tests' SpiffWorkflow engine
(``tests/engines/spiff_engine.py``, ``order_payment.bpmn`` behind SpiffArena's Messages API)
in this process, as ``bench/push.py --parts spiff`` runs it; B has a ``[[webhooks]]`` entry
with ``format = "spiff"`` and ``receipts = true`` pointing at it. Before each request this
process starts an ``order_payment`` process for a fresh order id (untimed), then POSTs
``payment.received`` (``correlationKey`` ``order-<id>``) A -> B with ``"mode": "correlate"``.
Timed: the start of the POST to A -> its whole answer, a 200 whose ``correlation`` says
``correlated`` and names that order's process instance, ``complete`` (anything else is an
error). On the way: A seals and hands the message to the backbone, B's long-poll takes it, B
stores it, its delivery job POSTs it to the engine, records the outcome and owes A a receipt,
its receipts job seals that and hands it to the backbone, A's long-poll takes it and records
it, and A's waiting request wakes.

Runs, one after the other in one cluster, after a warm-up of each (untimed):

- bare: a bare aiohttp JSON handler in its own process (``bench/messages.py``'s, answers 202),
  the floor of any HTTP round trip from this client;
- engine: a direct POST of the same payment to the engine (a process waiting for it);
- publish: a plain publish-mode send A -> B, answered 201 when the backbone took it;
- correlate: the round trip above, one request at a time (``--count``), then from
  ``--concurrency`` clients at once (``--concurrent-count`` requests, requests/s).

All but the concurrent run pause ``--interval`` after each request. Each figure is printed with
its ratio to the bare handler's. Then the sequential correlate requests are split by the
clocks on the way (all wall clocks of this machine): A's ``sentAt``, B's ``receivedAt``, B's
``message.received`` event, the engine delivery's first attempt, the engine's own notes (request
read, process completed), the receipt's ``correlatedAt`` (B, recording the outcome), B's log line
``receipts: told`` (the receipt handed to the backbone, millisecond resolution) and A's
``message.correlated`` event.

    python bench/correlation.py                    # 300 + 300 (8 clients), ~1 minute
    python bench/correlation.py --count 1000 --concurrency 16
    python bench/correlation.py --quick            # 50 + 50
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    HOST,
    SEND_TIMEOUT,
    BenchError,
    Cluster,
    Connector,
    Proc,
    Row,
    TwoConnectors,
    check,
    client_session,
    format_ms,
    free_port,
    header_line,
    json_number,
    log,
    machine_info,
    message_headers,
    percentile,
    print_summary,
    print_table,
    run_main,
    summary_head,
)
from messages import _BARE_SERVER, iso_to_ns
from push import (
    PAYMENT_NAME,
    SPIFF_API_KEY,
    SPIFF_PROCESS,
    TimedSpiffEngine,
    all_deliveries,
    load_average,
    spiff_engine,
    spiff_webhook_toml,
    spread,
    spread_json,
    start_pair,
)

TARGET_P50_MS = 80.0
IDLE_SECONDS = 2.0
T = TypeVar("T")
KINDS = ("bare", "engine", "publish", "correlate")
TOLD = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO connector\.correlation\.sending: "
    r"receipts: told \S+ that (\S+) is correlated"
)


# --------------------------------------------------------------------------- requests


@dataclass
class Answer:
    """One timed POST as the client saw it (``time.time_ns``, to compare with the servers')."""

    kind: str
    seq: int
    status: int  # 0 for a transport error
    start_ns: int
    end_ns: int
    body: Any  # the parsed JSON answer; the error text when there is none
    process_id: int | None = None  # the process started for it (engine, correlate)
    error: str | None = None

    @property
    def ns(self) -> int:
        return self.end_ns - self.start_ns


async def timed_post(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    payload: dict[str, Any],
    kind: str,
    seq: int,
) -> Answer:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    start = time.time_ns()
    try:
        async with session.post(url, data=raw, headers=headers, timeout=SEND_TIMEOUT) as resp:
            text = await resp.read()
            end = time.time_ns()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return Answer(kind, seq, 0, start, time.time_ns(), None, error=f"{exc!r}")
    try:
        body = json.loads(text)
    except ValueError:
        body = text[:300].decode(errors="replace")
    return Answer(kind, seq, resp.status, start, end, body)


@dataclass
class Targets:
    """Where each kind of request goes, and what makes one (a fresh order per seq)."""

    run_id: str
    pair: TwoConnectors
    engine: TimedSpiffEngine
    engine_url: str
    bare_url: str
    request_timeout: float

    def order(self, kind: str, seq: int) -> str:
        return f"{self.run_id}-{kind}-{seq}"

    async def send(self, session: aiohttp.ClientSession, kind: str, seq: int) -> Answer:
        """One request of ``kind``; for engine and correlate, after starting a process that
        waits for that order's payment (untimed)."""
        order = self.order(kind, seq)
        content = {"orderId": order, "amount": 10, "bench": self.run_id, "kind": kind, "seq": seq}
        process_id = None
        if kind in ("engine", "correlate"):
            process = self.engine.start(SPIFF_PROCESS, {"orderId": order})
            if process.status != "waiting":
                raise BenchError(f"the process of order {order} is {process.status}, not waiting")
            process_id = process.id
        a = self.pair.a
        if kind == "bare":
            answer = await timed_post(session, self.bare_url, {}, content, kind, seq)
        elif kind == "engine":
            url = f"{self.engine_url}/v1.0/messages/{PAYMENT_NAME}"
            url += f"?message_instance_uuid={uuid.uuid4()}"
            headers = {"SpiffWorkflow-Api-Key": SPIFF_API_KEY}
            answer = await timed_post(session, url, headers, content, kind, seq)
        else:
            payload: dict[str, Any] = {"recipients": [self.pair.address_b], "content": content}
            if kind == "correlate":
                payload |= {
                    "name": PAYMENT_NAME,
                    "correlationKey": f"order-{order}",
                    "mode": "correlate",
                    "requestTimeout": self.request_timeout,
                }
            else:  # a name B's spiff webhook does not take: B stores it, pushes nothing
                payload["name"] = "bench.publish"
            url = f"{a.url}/api/v1/messages"
            answer = await timed_post(session, url, message_headers(a.headers), payload, kind, seq)
        answer.process_id = process_id
        answer.error = answer.error or self.wrong(answer)
        return answer

    def wrong(self, answer: Answer) -> str | None:
        """What is wrong with an answer, or None."""
        expected = {"bare": 202, "engine": 200, "publish": 201, "correlate": 200}[answer.kind]
        if answer.status != expected:
            return f"{answer.status}: {str(answer.body)[:300]}"
        body = answer.body if isinstance(answer.body, dict) else {}
        if answer.kind == "engine":
            instance = body.get("process_instance") or {}
        elif answer.kind == "correlate":
            correlation = body.get("correlation") or {}
            if correlation.get("status") != "correlated":
                return f"200 but correlation {correlation!r}"
            instance = (correlation.get("result") or {}).get("process_instance") or {}
        else:
            return None
        if instance.get("id") != answer.process_id or instance.get("status") != "complete":
            return f"process instance {instance!r}, expected {answer.process_id} complete"
        return None


async def run_sequential(
    session: aiohttp.ClientSession,
    targets: Targets,
    cluster: Cluster,
    kind: str,
    seqs: range,
    interval: float,
) -> list[Answer]:
    answers = []
    for seq in seqs:
        answers.append(await targets.send(session, kind, seq))
        if seq % 50 == 0:
            cluster.check_alive()
        if interval > 0:
            await asyncio.sleep(interval)
    return answers


async def run_concurrent(
    session: aiohttp.ClientSession, targets: Targets, seqs: range, clients: int
) -> list[Answer]:
    """``clients`` tasks sending correlate requests back to back."""
    todo = iter(seqs)
    answers: list[Answer] = []

    async def client() -> None:
        for seq in todo:
            answers.append(await targets.send(session, "correlate", seq))

    await asyncio.gather(*(client() for _ in range(clients)))
    return answers


@dataclass
class Metered:
    """CPU seconds each process used during some work, and the work's wall seconds."""

    wall: float
    used: dict[str, float]

    def share(self, name: str) -> float:
        return self.used[name] / self.wall if self.wall > 0 else math.nan

    def per_request(self, name: str, requests: int) -> str:
        return f"{self.used[name] * 1e3 / requests:.1f} ms/request ({self.share(name):.0%})"


async def metered(pair: TwoConnectors, work: Awaitable[T]) -> tuple[T, Metered]:
    """``work``'s result, and the CPU connectors A, B, the backbone and this process used."""
    cpu = pair.cpu_meter()
    cpu.start()
    started = time.perf_counter()
    result = await work
    cpu.stop()
    return result, Metered(time.perf_counter() - started, cpu.summary())


async def start_bare(
    session: aiohttp.ClientSession, cluster: Cluster, time_limit: float = 30.0
) -> str:
    """``bench/messages.py``'s bare aiohttp handler as a process of ``cluster``; its URL once
    it answers a POST."""
    port = free_port()
    script = cluster.root / "bare.py"
    script.write_text(_BARE_SERVER)
    argv = [sys.executable, str(script), str(port)]
    proc = Proc("bare-aiohttp", argv, cluster.root / "bare.log")
    cluster.procs.append(proc)
    proc.start()
    url = f"http://{HOST}:{port}/api/v1/messages"
    deadline = time.monotonic() + time_limit
    while time.monotonic() < deadline:
        proc.check_alive()
        answer = await timed_post(session, url, {}, {}, "bare", -1)
        if answer.status == 202:
            return url
        await asyncio.sleep(0.1)
    raise BenchError(f"the bare aiohttp server did not answer within {time_limit:.0f} s")


# --------------------------------------------------------------------------- where the time goes


async def events_of(
    session: aiohttp.ClientSession, c: Connector, kind: str
) -> dict[str, tuple[str, int]]:
    """Message id -> (event id, ``createdAt`` in ns) of its event of type ``kind`` at ``c``."""
    seen: dict[str, tuple[str, int]] = {}
    cursor: str | None = None
    for _ in range(10_000):
        params = {"type": kind, "limit": "1000"}
        if cursor:
            params["after"] = cursor
        page = await c.get_json(session, "/api/v1/events", time_limit=60, **params)
        if not page["items"]:
            return seen
        for item in page["items"]:
            key = str(item["data"].get("id"))
            seen.setdefault(key, (str(item["id"]), iso_to_ns(item["createdAt"])))
        cursor = str(page["nextCursor"])
    raise BenchError("GET /api/v1/events did not end (cursor loop?)")


def told_ns(log_path: Path) -> dict[str, int]:
    """Message id -> when B logged handing its receipt to the backbone (local time, ms)."""
    told: dict[str, int] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        match = TOLD.match(line)
        if match:
            when = dt.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f")
            told.setdefault(match[2], round(when.timestamp() * 1e9))
    return told


STAGES = (
    ("client -> A's sentAt (accept, seal, backbone took it)", "start", "sent"),
    ("A's sentAt -> B's receivedAt (backbone, B's long-poll)", "sent", "received"),
    ("B: receivedAt -> message.received event (ingest)", "received", "event"),
    ("B: event -> first attempt started (claim, reads)", "event", "attempt"),
    ("B: attempt started -> engine reads the request", "attempt", "engine"),
    ("engine: request -> process completed", "engine", "completed"),
    ("B: process completed -> correlatedAt (answer, outcome)", "completed", "correlated"),
    ("B: correlatedAt -> receipt handed to backbone (log)", "correlated", "told"),
    ("receipt handed -> A's message.correlated event", "told", "a_event"),
    ("A: message.correlated event -> client has the 200", "a_event", "end"),
)


async def breakdown(
    session: aiohttp.ClientSession,
    targets: Targets,
    runs: Sequence[Sequence[Answer]],
) -> list[dict[str, list[int]]]:
    """Per run of correlate requests, each stage of ``STAGES`` (ns, ascending) over its
    answered requests."""
    pair, engine = targets.pair, targets.engine
    b_received = await events_of(session, pair.b, "message.received")
    a_correlated = await events_of(session, pair.a, "message.correlated")
    listed = await pair.b.get_json(session, "/api/v1/webhooks")
    spiff_id = next(str(h["id"]) for h in listed["items"] if h["format"] == "spiff")
    first_attempt = {
        str(d["eventId"]): iso_to_ns(d["attempts"][0]["startedAt"])
        for d in await all_deliveries(session, pair.b, spiff_id)
        if d.get("attempts")
    }
    total = sum(len(answers) for answers in runs)
    incoming = await pair.b.incoming_messages(session, max_pages=total // 1000 + 50)
    b_stored = {str(m["id"]): iso_to_ns(m["receivedAt"]) for m in incoming if m.get("receivedAt")}
    told = told_ns(pair.b.proc.log_path)

    def clocks(answer: Answer) -> dict[str, int | None]:
        body = answer.body
        message_id = str(body["id"])
        noted = engine.sent_ns.get(targets.order(answer.kind, answer.seq))
        b_event = b_received.get(message_id)
        a_event = a_correlated.get(message_id)
        return {
            "start": answer.start_ns,
            "sent": iso_to_ns(body["sentAt"]),
            "received": b_stored.get(message_id),
            "event": b_event[1] if b_event else None,
            "attempt": first_attempt.get(b_event[0]) if b_event else None,
            "engine": noted[0] if noted else None,
            "completed": engine.completed_ns.get(answer.process_id or 0),
            "correlated": iso_to_ns(body["correlation"]["correlatedAt"]),
            "told": told.get(message_id),
            "a_event": a_event[1] if a_event else None,
            "end": answer.end_ns,
        }

    per_run: list[dict[str, list[int]]] = []
    for answers in runs:
        stages: dict[str, list[int]] = {label: [] for label, _, _ in STAGES}
        for seen in (clocks(a) for a in answers if a.error is None):
            for label, since, until in STAGES:
                first, then = seen[since], seen[until]
                if first is not None and then is not None:
                    stages[label].append(then - first)
        per_run.append({label: sorted(values) for label, values in stages.items()})
    return per_run


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--count", type=int, default=300, help="sequential requests of each kind (300)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="clients of the concurrent correlate run (8)"
    )
    parser.add_argument(
        "--concurrent-count",
        type=int,
        default=None,
        help="requests of the concurrent correlate run (default: --count)",
    )
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests of each kind (20)")
    parser.add_argument(
        "--interval", type=float, default=0.02, help="pause after each sequential request (0.02 s)"
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=30.0,
        help="requestTimeout of each correlate send (30 s)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 50 + 50 requests")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and logs")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)
    if args.quick:
        args.count = min(args.count, 50)
        args.warmup = min(args.warmup, 5)
    if args.concurrent_count is None:
        args.concurrent_count = args.count
    if min(args.count, args.concurrency, args.concurrent_count) <= 0:
        parser.error("--count, --concurrency and --concurrent-count must be positive")
    if args.warmup < 0 or args.interval < 0 or args.request_timeout <= 0:
        parser.error("--warmup and --interval may not be negative, --request-timeout must be > 0")
    return args


def errors_of(answers: Sequence[Answer]) -> list[Answer]:
    return [a for a in answers if a.error is not None]


def print_errors(answers: Sequence[Answer], top: int = 5) -> None:
    kinds = Counter(f"{a.kind}: {a.error}"[:200] for a in errors_of(answers))
    if kinds:
        print("errors (most common first):")
        for text, count in kinds.most_common(top):
            print(f"  {count:>6} x {text}")


async def main(args: argparse.Namespace) -> int:
    info = machine_info()
    print(header_line(info), flush=True)
    load_before = load_average()
    print(f"# load average (1, 5, 15 min): {load_before}", flush=True)
    run_id = os.urandom(6).hex()
    n, n_conc = args.count, args.concurrent_count
    engine = TimedSpiffEngine()
    server = spiff_engine.SpiffServer(engine, api_key=SPIFF_API_KEY)
    await server.start()
    try:
        with Cluster.create("bench-correlation-", keep=args.keep) as cluster:
            async with client_session(limit=max(16, args.concurrency * 2)) as session:
                bare_url = await start_bare(session, cluster)
                b_toml = spiff_webhook_toml(server.url) + "receipts = true\n"
                pair = await start_pair(session, cluster, b_toml)
                targets = Targets(run_id, pair, engine, server.url, bare_url, args.request_timeout)

                async def each(kind: str, seqs: range) -> list[Answer]:
                    return await run_sequential(
                        session, targets, cluster, kind, seqs, args.interval
                    )

                warm: list[Answer] = []
                log(f"warm-up: {args.warmup} requests of each kind")
                for kind in KINDS:
                    warm += await each(kind, range(-args.warmup, 0))
                log(f"idle: {IDLE_SECONDS:g} s, CPU only")
                _, idle = await metered(pair, asyncio.sleep(IDLE_SECONDS))
                timed: dict[str, list[Answer]] = {}
                cpu: dict[str, Metered] = {"idle": idle}
                for kind in KINDS:
                    log(f"{kind}: {n} requests, one at a time, {args.interval * 1000:g} ms apart")
                    timed[kind], cpu[kind] = await metered(pair, each(kind, range(n)))
                log(f"correlate: {n_conc} requests from {args.concurrency} clients at once")
                concurrent, cpu["concurrent"] = await metered(
                    pair, run_concurrent(session, targets, range(n, n + n_conc), args.concurrency)
                )
                log("reading the clocks on the way")
                stages, conc_stages = await breakdown(
                    session, targets, [timed["correlate"], concurrent]
                )
                cluster.check_alive()
    finally:
        await server.stop()

    # ------------------------------------------------------------------ figures
    spreads = {kind: sorted(a.ns for a in answers) for kind, answers in timed.items()}
    conc_ns = sorted(a.ns for a in concurrent)
    p50 = {kind: percentile(values, 50) for kind, values in spreads.items()}
    bare = p50["bare"]

    def ratio(value: float) -> str:
        return f"{value / bare:.1f}x bare" if bare > 0 else "-"

    every = [*(a for answers in timed.values() for a in answers), *concurrent]
    errors = errors_of(every)
    conc_ok = len(concurrent) - len(errors_of(concurrent))
    conc_wall = cpu["concurrent"].wall
    rate = conc_ok / conc_wall if conc_wall > 0 else math.nan
    seq_rate = 1e9 / (sum(spreads["correlate"]) / n) if spreads["correlate"] else math.nan
    target_ok = bool(spreads["correlate"]) and p50["correlate"] <= TARGET_P50_MS * 1e6
    labels = {
        "bare": "bare aiohttp JSON handler (own process), 202",
        "engine": "direct POST to the engine (process waiting), 200",
        "publish": "publish send A -> B, 201",
        "correlate": "correlate send A -> B -> engine -> receipt, 200",
    }
    rows = [
        Row("load average before / after (1, 5, 15 min)", f"{load_before}  |  {load_average()}"),
        Row(
            "requests: warm-up / sequential of each kind / concurrent",
            f"{len(warm)} / {n:,} / {n_conc:,} ({args.concurrency} clients)",
        ),
        Row("errors (warm-up, timed)", f"{len(errors_of(warm))}, {len(errors)}"),
    ]
    for kind in KINDS:
        rows.append(Row(f"{labels[kind]}, p50/p90/p99/max", spread(spreads[kind])))
    rows += [
        Row(
            "correlate round trip, p50",
            format_ms(p50["correlate"]),
            f"<= {TARGET_P50_MS:.0f} ms",
            check(target_ok),
        ),
        *(Row(f"{kind}, p50 / bare p50", ratio(p50[kind])) for kind in KINDS[1:]),
        Row("correlate / publish, p50", f"{p50['correlate'] / p50['publish']:.1f}x"),
        Row(
            f"correlate, {args.concurrency} clients: requests/s",
            f"{rate:,.1f} /s (one client: {seq_rate:,.1f} /s without pauses)",
        ),
        Row(f"correlate, {args.concurrency} clients: p50/p90/p99/max", spread(conc_ns)),
        Row(
            f"correlate, {args.concurrency} clients, p50 / bare p50",
            ratio(percentile(conc_ns, 50)),
        ),
    ]
    rows += [
        Row(
            f"…{label}",
            f"{spread(values)} | {percentile(conc_stages[label], 50) / 1e6:,.1f} ms",
        )
        for label, values in stages.items()
    ]
    total, conc_total = (
        sum(percentile(v, 50) for v in run.values()) for run in (stages, conc_stages)
    )
    rows.append(Row("…sum of the stages' p50", f"{format_ms(total)} | {format_ms(conc_total)}"))
    rows += [
        Row(
            f"CPU {name}: idle | publish | correlate | correlate, {args.concurrency} clients",
            f"{idle.share(name):.0%} of a core | {cpu['publish'].per_request(name, n)} | "
            f"{cpu['correlate'].per_request(name, n)} | "
            f"{cpu['concurrent'].per_request(name, n_conc)}",
        )
        for name in idle.used
    ]
    print_table(
        f"bench/correlation.py — {n:,} requests of each kind one at a time, then {n_conc:,} "
        f"correlate requests from {args.concurrency} clients",
        rows,
    )
    print_errors(warm + every)
    data_ok = not errors
    print_summary(
        {
            **summary_head("correlation", info, count=n),
            "concurrentCount": n_conc,
            "concurrency": args.concurrency,
            "intervalMs": round(args.interval * 1000, 3),
            **{kind: spread_json(spreads[kind]) for kind in KINDS},
            "ratioToBareP50": {k: json_number(p50[k] / bare, 2) for k in KINDS[1:]},
            "concurrent": {**spread_json(conc_ns), "perS": json_number(rate, 1)},
            "stagesP50Ms": {
                label.split(" (")[0]: json_number(percentile(v, 50) / 1e6, 2)
                for label, v in stages.items()
            },
            "cpuSeconds": {
                phase: (m.used | {"wall": round(m.wall, 2)}) for phase, m in cpu.items()
            },
            "errors": len(errors),
            "warmupErrors": len(errors_of(warm)),
            "load": [load_before, load_average()],
            "dataOk": data_ok,
            "targetsMet": {"correlateP50": target_ok},
        }
    )
    if not data_ok:
        return 1
    return 1 if args.strict and not target_ok else 0


if __name__ == "__main__":
    arguments = parse_args()
    sys.exit(run_main(lambda: main(arguments)))
