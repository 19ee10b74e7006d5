"""Webhook push benchmark: latency (also to a SpiffWorkflow engine), throughput and outage
recovery of the delivery job.

Each part starts its own backbone and two connectors A and B (separate processes, 127.0.0.1,
temp dirs, both keeping a long-poll open to the backbone). The webhook receiver is an aiohttp
server in this process (``POST /hook`` on 127.0.0.1) that checks every request's Standard
Webhooks signature over the raw body (the ``standardwebhooks`` package), answers 204 and notes
when each ``webhook-id`` arrived (``time.time_ns`` and ``time.perf_counter_ns``). Each figure is
printed beside a baseline measured in the same run.

``latency``: B has a ``[[webhooks]]`` entry (config, default delivery settings) pointing at the
receiver; one sender POSTs messages A -> B, one at a time with a pause (``--interval``), as
``bench/events.py`` does. Per message:

- B stored -> receiver = the receiver's ``time.time_ns()`` on arrival - the message's
  ``receivedAt`` at B (read from B's API). Both are wall clocks of the same machine. B takes
  ``receivedAt`` when it starts ingesting the page that carries the message, so the figure
  includes B's own ingest of it (opening the envelope, the transaction) as well as the delivery.
- A's 201 -> receiver = arrival - the 201 answer at A (``perf_counter`` of this process). A
  answers after the platform took the message; B may deliver before that answer reaches the
  client, so this can be negative.

Baseline: the same messages on B's long-polled event feed (``GET /api/v1/events?wait=30``,
followed by a consumer in this process as in ``bench/events.py``), the pull path webhooks
replace. Floor: a bare signed POST from this process to the receiver (request start ->
arrival), the cost of the HTTP hop itself.

``spiff`` (issue 12): the SpiffWorkflow engine of the tests (``tests/engines/spiff_engine.py``:
the ``spiffworkflow`` package running ``tests/engines/order_payment.bpmn`` behind SpiffArena's
Messages API, an aiohttp app) runs in this process. B has two ``[[webhooks]]`` entries: one
with ``format = "spiff"`` pointing at the engine, one standard entry pointing at the receiver.
Per message (``--spiff-count``, one at a time with the ``--interval`` pause): this process
starts an ``order_payment`` process for a fresh order id (it waits for ``payment.received``
correlated on ``orderId``), then A sends ``payment.received`` (``correlationKey``
``order-<id>``, content ``{"orderId": id, "amount": 10}``) to B. Timed, from B's
``receivedAt``: to the moment the engine stored that process as completed (``time.time_ns``
noted in the engine's own run of the workflow, inside the request that delivered the
message), beside the plain webhook's arrival at the receiver for the same messages. Both
deliveries of a message leave B at about the same time, so each includes the other's share
of B's work.

``throughput``: a webhook is made through the API, disabled (a disabled subscription gets no
deliveries: events are routed to enabled subscriptions only). ``--backlog`` messages are sent
A -> B (``Prefer: respond-async``, ``--concurrency`` senders) and awaited at B; then the webhook
is enabled and ``POST /api/v1/webhooks/{id}/replay`` makes one pending delivery per message, the
same rows routing would have written, all due at once. Timed: from the PATCH until the receiver
has every ``webhook-id``; the rate from the first to the last arrival is the one compared.
Baseline: the same receiver, driven by a bare aiohttp client posting the very bodies the
connector delivered, each signed afresh (HMAC-SHA256 over ``id.timestamp.body``, as the product
signs), 8 in flight (``delivery.per_endpoint``'s default), in a separate process on uvloop when
it is installed (as the connector runs): sender and receiver each on their own process, like the
connector and the receiver. The same client inside this process (sharing the receiver's event
loop and core) is printed too, for reference.

``outage``: B's ``[[webhooks]]`` entry with the default delivery settings (retry schedule 5 s,
300 s, ...; breaker 5 failures, first pause 5 s doubling up to 300 s; ``--breaker-max`` changes
only the last). After a warm-up the receiver is stopped (its port refuses connections),
``--events`` messages are sent A -> B and stored there, and after ``--outage`` seconds the
receiver comes back on the same port. Timed: until every event is delivered (target: within
60 s of the return). Also: the requests made during the outage (B's attempt log: the breaker
should probe, not hammer), the breaker's next probe as it stood at the return, and the most
requests the receiver had in flight at once after the return (bounded by ``per_endpoint``; the
receiver does ``--receiver-delay`` of work per request, so that overlapping requests show).

    python bench/push.py                               # all four parts: ~15 minutes
    python bench/push.py --parts latency,throughput    # ~1 minute
    python bench/push.py --parts spiff                 # ~15 s
    python bench/push.py --parts outage --outage 120 --breaker-max 30
    python bench/push.py --quick                       # smoke run: 100 / 50 / 500 / 500, 20 s
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import importlib
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from standardwebhooks import Webhook as StandardWebhook
from standardwebhooks import WebhookVerificationError

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tests.engines.spiff_engine

from _harness import (
    HOST,
    BenchError,
    Cluster,
    Connector,
    CpuMeter,
    Row,
    Sent,
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
    post_message,
    print_send_errors,
    print_summary,
    print_table,
    run_main,
    summary_head,
)
from events import FeedConsumer, send_paced, wait_for_events
from messages import iso_to_ns, send_all, wait_for_ingest

from connector.settings import BreakerSettings

# the SpiffWorkflow engine of the tests, imported so that mypy does not follow it into the
# untyped ``spiffworkflow`` package
spiff_engine = importlib.import_module("tests.engines.spiff_engine")
SpiffEngineBase: Any = spiff_engine.SpiffEngine

PARTS = ("latency", "spiff", "throughput", "outage")
TARGET_P50_MS = 20.0
TARGET_P99_MS = 100.0
TARGET_RATIO = 0.5
TARGET_RECOVERY_S = 60.0
PER_ENDPOINT = 8  # delivery.per_endpoint's default: the baseline's requests in flight
BREAKER = BreakerSettings().model_dump()  # delivery.breaker's defaults, from the code
EVENT_TYPE = "message.received"
BARE_PREFIX = "bare-"
HOOK_PATH = "/hook"
PAYMENT_NAME = "payment.received"
SPIFF_PROCESS = "order_payment"  # tests/engines/order_payment.bpmn
SPIFF_API_KEY = "bench-spiff-key"


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def spread(values_ns: Sequence[float]) -> str:
    """``p50 / p90 / p99 / max`` of an ascending list of nanoseconds, in ms."""
    if not values_ns:
        return "-"
    cells = [percentile(values_ns, p) / 1e6 for p in (50, 90, 99)] + [values_ns[-1] / 1e6]
    return " / ".join(f"{v:,.1f}" for v in cells) + " ms"


def spread_json(values_ns: Sequence[float]) -> dict[str, float | None]:
    worst = values_ns[-1] if values_ns else math.nan
    return {
        "p50Ms": json_number(percentile(values_ns, 50) / 1e6, 2),
        "p90Ms": json_number(percentile(values_ns, 90) / 1e6, 2),
        "p99Ms": json_number(percentile(values_ns, 99) / 1e6, 2),
        "maxMs": json_number(worst / 1e6, 2),
    }


# --------------------------------------------------------------------------- the receiver


@dataclass
class Arrival:
    """The first request of one ``webhook-id``."""

    webhook_id: str
    seq: int | None
    message_id: str | None
    received_at: str | None  # data.receivedAt in the body
    event_at: str | None  # the event's timestamp in the body (when B wrote the event)
    wall_ns: int  # time.time_ns() when the request reached the handler
    perf_ns: int  # time.perf_counter_ns() at the same moment


@dataclass
class Tally:
    """What the receiver got of one label (a kind of message of this run, or a bare sender)."""

    unique: dict[str, Arrival] = field(default_factory=dict)
    requests: int = 0
    first_ns: int = 0  # perf_counter_ns of the first request
    last_new_ns: int = 0  # perf_counter_ns of the latest request with a new webhook-id
    bodies: list[bytes] = field(default_factory=list)  # first body of each id, if kept

    @property
    def duplicates(self) -> int:
        return self.requests - len(self.unique)

    def rate(self) -> float:
        """Unique ids per second from the first arrival to the last new one."""
        seconds = (self.last_new_ns - self.first_ns) / 1e9
        return (len(self.unique) - 1) / seconds if seconds > 0 else math.nan


class Receiver:
    """A webhook endpoint in this process: ``POST /hook`` on 127.0.0.1:``port``.

    Every request is verified (``standardwebhooks``, over the raw body) when a secret is set;
    a bad one is answered 401 and counted. Requests are sorted into labels: a bare sender's by
    its ``webhook-id`` prefix (``bare-<name>-<n>``), the connector's by the ``kind`` in the
    message content of this run. ``stop()`` closes the listening socket (connections are then
    refused); ``start()`` again listens on the same port.
    """

    def __init__(self, run_id: str, *, delay: float = 0.0, keep_bodies: bool = False) -> None:
        self.run_id = run_id
        self.port = free_port()
        self.delay = delay
        self.keep_bodies = keep_bodies
        self.tallies: dict[str, Tally] = {}
        self.requests = 0
        self.bad_signatures = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections: set[tuple[str, int]] = set()
        self.arrival_ns: list[int] = []  # perf_counter_ns of every request
        self.changed = asyncio.Event()
        self._verifier: StandardWebhook | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{HOOK_PATH}"

    def verify_with(self, secret: str) -> None:
        self._verifier = StandardWebhook(secret)

    def tally(self, label: str) -> Tally:
        return self.tallies.setdefault(label, Tally())

    def count(self, label: str) -> int:
        return len(self.tallies[label].unique) if label in self.tallies else 0

    def reset_load(self) -> None:
        """Forget the in-flight peak and the connections seen (before a phase measures them)."""
        self.max_in_flight = self.in_flight
        self.connections = set()
        self.arrival_ns = []

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(HOOK_PATH, self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST, self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        perf_ns, wall_ns = time.perf_counter_ns(), time.time_ns()
        self.requests += 1
        self.arrival_ns.append(perf_ns)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            peer = request.transport.get_extra_info("peername") if request.transport else None
            if isinstance(peer, tuple) and len(peer) >= 2:
                self.connections.add((str(peer[0]), int(peer[1])))
            body = await request.read()
            headers = {k.lower(): v for k, v in request.headers.items()}
            try:
                if self._verifier is not None:
                    payload = self._verifier.verify(body, headers)
                else:
                    payload = json.loads(body)
            except (WebhookVerificationError, ValueError):
                self.bad_signatures += 1
                return web.Response(status=401)
            self._note(headers.get("webhook-id", ""), payload, body, perf_ns, wall_ns)
            if self.delay > 0:
                await asyncio.sleep(self.delay)
            return web.Response(status=204)
        finally:
            self.in_flight -= 1

    def _note(self, webhook_id: str, payload: Any, body: bytes, perf_ns: int, wall_ns: int) -> None:
        seq: int | None = None
        message_id = received_at = event_at = None
        if webhook_id.startswith(BARE_PREFIX):
            label, _, number = webhook_id.rpartition("-")
            seq = int(number) if number.isdigit() else None
        else:
            label = "foreign"
            data = payload.get("data") if isinstance(payload, dict) else None
            content = data.get("content") if isinstance(data, dict) else None
            if isinstance(content, dict) and content.get("bench") == self.run_id:
                label = str(content.get("kind"))
                seq = content.get("seq") if isinstance(content.get("seq"), int) else None
            if isinstance(data, dict):
                message_id = data.get("id")
                received_at = data.get("receivedAt")
            if isinstance(payload, dict):
                event_at = payload.get("timestamp")
        tally = self.tally(label)
        tally.requests += 1
        if tally.requests == 1:
            tally.first_ns = perf_ns
        if webhook_id not in tally.unique:
            tally.unique[webhook_id] = Arrival(
                webhook_id, seq, message_id, received_at, event_at, wall_ns, perf_ns
            )
            tally.last_new_ns = perf_ns
            if self.keep_bodies:
                tally.bodies.append(body)
            self.changed.set()


async def wait_for_receiver(
    receiver: Receiver,
    cluster: Cluster,
    label: str,
    expected: int,
    *,
    stall_timeout: float,
    total_timeout: float = math.inf,
    quiet: bool = False,
) -> tuple[bool, float]:
    """Until the receiver has ``expected`` ids of ``label``, or none came for ``stall_timeout``
    s (or ``total_timeout`` passed). Returns (all arrived, seconds waited)."""
    start = last_progress = last_log = time.monotonic()
    last = -1
    while True:
        receiver.changed.clear()
        cluster.check_alive()
        got = receiver.count(label)
        now = time.monotonic()
        if got >= expected:
            return True, now - start
        if got != last:
            last, last_progress = got, now
        elif now - last_progress > stall_timeout or now - start > total_timeout:
            log(f"giving up waiting: the receiver has {got}/{expected} {label} deliveries")
            return False, now - start
        if not quiet and now - last_log >= 10:
            log(f"receiver: {got}/{expected} {label}")
            last_log = now
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                await receiver.changed.wait()


# --------------------------------------------------------------------------- a bare sender


def signed_headers(key: bytes, msg_id: str, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers as the product makes them: HMAC-SHA256, base64, ``v1,``."""
    stamp = str(int(time.time()))
    digest = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": stamp,
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


async def bare_send(
    url: str, secret: str, bodies: Sequence[bytes], concurrency: int, name: str
) -> tuple[int, float]:
    """POST each body to ``url``, signed afresh, ``concurrency`` in flight, ids
    ``bare-<name>-<n>``. Returns (answers not 2xx or failed, seconds)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    todo = iter(enumerate(bodies))
    failed = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal failed
            for n, body in todo:
                headers = signed_headers(key, f"{BARE_PREFIX}{name}-{n}", body)
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        failed += not 200 <= resp.status < 300
                except (aiohttp.ClientError, OSError):
                    failed += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return failed, time.perf_counter() - start


def bare_sender_main() -> None:
    """Entry of the bare sender's own process: ``url secret concurrency name bodies-file``
    (one JSON string per line); prints ``{"failed", "seconds"}``. On uvloop when installed."""
    url, secret, concurrency, name, path = sys.argv[1:6]
    lines = Path(path).read_text().splitlines()
    bodies = [str(json.loads(line)).encode() for line in lines]
    loop_factory = asyncio.new_event_loop
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        failed, seconds = runner.run(bare_send(url, secret, bodies, int(concurrency), name))
    print(json.dumps({"failed": failed, "seconds": seconds}), flush=True)


async def bare_send_process(
    url: str, secret: str, bodies: Sequence[bytes], concurrency: int, name: str, workdir: Path
) -> tuple[int, float]:
    """:func:`bare_send` in a process of its own (this script imported there)."""
    path = workdir / f"bodies-{name}.jsonl"
    path.write_text("".join(json.dumps(body.decode()) + "\n" for body in bodies))
    code = "import sys; sys.path.insert(0, sys.argv.pop(1)); import push; push.bare_sender_main()"
    bench_dir = str(Path(__file__).resolve().parent)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        bench_dir,
        url,
        secret,
        str(concurrency),
        name,
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise BenchError(f"the bare sender failed ({process.returncode}):\n{err.decode()[-2000:]}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    return int(result["failed"]), float(result["seconds"])


# --------------------------------------------------------------------------- connectors, API


def part_cluster(args: argparse.Namespace, part: str) -> Cluster:
    """A part's processes; with ``--profile``, connectors under cProfile (``DIR/<part>/``)."""
    profile = None if args.profile is None else args.profile / part
    return Cluster.create(f"bench-push-{part}-", keep=args.keep, profile_dir=profile)


def webhook_toml(url: str, secret: str) -> str:
    return (
        f"\n[[webhooks]]\nurl = {json.dumps(url)}\n"
        f'events = ["{EVENT_TYPE}"]\nsecret = {json.dumps(secret)}\n'
    )


def delivery_toml(breaker_max: float | None) -> str:
    if breaker_max is None:
        return ""  # the defaults of config/default.toml
    return (
        f"\n[delivery]\nbreaker = {{ failures = {BREAKER['failures']}, "
        f"first = {BREAKER['first']:g}, max = {breaker_max:g} }}\n"
    )


async def start_pair(
    session: aiohttp.ClientSession, cluster: Cluster, b_toml: str = ""
) -> TwoConnectors:
    """A backbone, connector A, and connector B with ``b_toml`` appended to its config."""
    backbone = cluster.start_backbone()
    await backbone.wait_ready(session)
    a = cluster.start_connector("a", backbone.url, long_poll=True)
    b = cluster.start_connector("b", backbone.url, long_poll=True, extra_toml=b_toml)
    await a.wait_ready(session)
    await b.wait_ready(session)
    pair = TwoConnectors(backbone, a, b, await a.address(session), await b.address(session))
    log(f"A = {pair.address_a}, B = {pair.address_b}")
    return pair


async def call(
    session: aiohttp.ClientSession,
    c: Connector,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    expect: Iterable[int] = (200,),
) -> Any:
    """One JSON API call; another status is a BenchError."""
    async with session.request(
        method,
        c.url + path,
        headers={**c.headers, "Content-Type": "application/json"},
        data=None if body is None else json.dumps(body).encode(),
        timeout=aiohttp.ClientTimeout(total=120),
    ) as resp:
        raw = await resp.read()
        if resp.status not in tuple(expect):
            raise BenchError(
                f"{method} {path} on {c.proc.name} answered {resp.status}: "
                f"{raw[:2000].decode(errors='replace')}\n{c.proc.tail(30)}"
            )
        return json.loads(raw) if raw else None


async def all_deliveries(
    session: aiohttp.ClientSession, b: Connector, webhook_id: str
) -> list[dict[str, Any]]:
    """Every delivery of the webhook with its attempts, pages of 1,000."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(10_000):
        params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
        page = await b.get_json(
            session, f"/api/v1/webhooks/{webhook_id}/deliveries", time_limit=120, **params
        )
        items.extend(page["items"])
        cursor = page.get("nextCursor")
        if not cursor:
            return items
    raise BenchError("GET .../deliveries did not end (cursor loop?)")


async def send_backlog(
    session: aiohttp.ClientSession,
    pair: TwoConnectors,
    cluster: Cluster,
    run_id: str,
    kind: str,
    count: int,
    concurrency: int,
    stall_timeout: float,
) -> tuple[list[Sent], float]:
    """``count`` messages A -> B with ``Prefer: respond-async`` from ``concurrency`` senders,
    then wait until B stored them all. Returns (the sends, seconds until all were at B)."""
    baseline = await pair.b.total_received(session) or 0
    start = time.perf_counter()
    log(f"send {count:,} {kind} messages A -> B (respond-async, {concurrency} senders)")
    phase = await send_all(
        session,
        pair.a,
        pair.address_b,
        run_id,
        range(count),
        concurrency,
        time.monotonic() + max(300.0, count / 10),
        kind=kind,
        prefer_async=True,
    )
    accepted = sum(1 for r in phase.results if r.status in (201, 202))
    complete, got, _ = await wait_for_ingest(
        session,
        pair.b,
        cluster,
        baseline=baseline,
        expected=accepted,
        run_id=run_id,
        kind=kind,
        poll=0.5,
        stall_timeout=stall_timeout,
        total_timeout=max(300.0, count / 10),
    )
    if not complete:
        raise BenchError(f"B stored only {got} of the {accepted} {kind} messages A accepted")
    return phase.results, time.perf_counter() - start


def send_errors(results: Sequence[Sent], ok: Iterable[int] = (201, 202)) -> list[Sent]:
    accepted = tuple(ok)
    return [r for r in results if r.status not in accepted]


# --------------------------------------------------------------------------- latency


@dataclass
class PartResult:
    rows: list[Row]
    summary: dict[str, Any]
    data_ok: bool  # False: lost deliveries, bad signatures, failed sends...
    targets: dict[str, bool]


async def bare_floor(receiver: Receiver, secret: str, body: bytes, count: int) -> list[int]:
    """``count`` signed POSTs from this process, one at a time: request start -> arrival (ns)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    starts: dict[str, int] = {}
    async with aiohttp.ClientSession() as session:
        for n in range(count):
            msg_id = f"{BARE_PREFIX}floor-{n}"
            headers = signed_headers(key, msg_id, body)
            starts[msg_id] = time.perf_counter_ns()
            async with session.post(receiver.url, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 204:
                    raise BenchError(f"the receiver answered the floor's POST {resp.status}")
            await asyncio.sleep(0.005)
    tally = receiver.tally(f"{BARE_PREFIX}floor")
    return sorted(tally.unique[i].perf_ns - start for i, start in starts.items())


async def part_latency(args: argparse.Namespace, run_id: str) -> PartResult:
    n = args.count
    secret = new_secret()
    receiver = Receiver(run_id, keep_bodies=True)
    receiver.verify_with(secret)
    await receiver.start()
    follow: asyncio.Task[None] | None = None
    consumer: FeedConsumer | None = None
    load_before = load_average()
    try:
        with part_cluster(args, "latency") as cluster:
            async with (
                client_session(limit=16) as session,
                client_session(limit=4) as feed_session,
            ):
                pair = await start_pair(session, cluster, webhook_toml(receiver.url, secret))
                a, b = pair.a, pair.b
                if not args.no_feed:
                    consumer = FeedConsumer(b, run_id)
                    await consumer.skip_to_end(feed_session)
                    follow = asyncio.create_task(consumer.follow(feed_session))

                log(f"warm-up: {args.warmup} messages, awaited at the receiver")
                warm = await send_paced(
                    session, a, pair.address_b, run_id, "warmup", args.warmup, 1, args.interval
                )
                warm_errors = send_errors(warm, (201,))
                ok, _ = await wait_for_receiver(
                    receiver, cluster, "warmup", len(warm) - len(warm_errors), stall_timeout=60
                )
                if not ok:
                    raise BenchError(
                        f"warm-up: the receiver got {receiver.count('warmup')} of "
                        f"{len(warm) - len(warm_errors)} deliveries\n{b.proc.tail(40)}"
                    )

                cpu = pair.cpu_meter()
                cpu.start()
                start_ns = time.perf_counter_ns()
                log(f"send {n} messages A -> B, one at a time, {args.interval * 1000:g} ms apart")
                results = await send_paced(
                    session, a, pair.address_b, run_id, "timed", n, 1, args.interval
                )
                accepted = sum(1 for r in results if r.status == 201)
                complete, waited = await wait_for_receiver(
                    receiver, cluster, "timed", accepted, stall_timeout=args.stall_timeout
                )
                if consumer is not None and follow is not None:
                    await wait_for_events(
                        consumer, follow, cluster, "timed", accepted, args.stall_timeout
                    )
                wall = (time.perf_counter_ns() - start_ns) / 1e9
                cpu.stop()
                await asyncio.sleep(args.linger)  # late duplicates would show up here
                incoming = await b.incoming_messages(session, max_pages=n // 1000 + 50)
                listed = await b.get_json(session, "/api/v1/webhooks")
                deliveries = await all_deliveries(session, b, str(listed["items"][0]["id"]))
                # the wall clock at a perf_counter reading, for the feed's arrival times
                wall_minus_perf = time.time_ns() - time.perf_counter_ns()
                log("floor: bare signed POSTs from this process to the receiver")
                floor = await bare_floor(
                    receiver, secret, receiver.tally("timed").bodies[0], min(200, n)
                )
                cluster.check_alive()
    finally:
        if follow is not None:
            follow.cancel()
            await asyncio.gather(follow, return_exceptions=True)
        await receiver.stop()

    # ------------------------------------------------------------------ analysis
    ok_sends = {r.seq: r for r in results if r.status == 201}
    errors = send_errors(results, (201,))
    tally = receiver.tally("timed")
    pushed = {a.seq: a for a in tally.unique.values() if a.seq is not None}
    stored_ns: dict[str, int] = {}
    for item in incoming:
        raw = item.get("receivedAt")
        if isinstance(raw, str):
            stored_ns[str(item.get("id"))] = iso_to_ns(raw)
    missing = sorted(seq for seq in ok_sends if seq not in pushed)
    unexpected = len(pushed.keys() - ok_sends.keys())
    same_received_at = sum(
        1
        for arrival in pushed.values()
        if arrival.received_at is not None
        and stored_ns.get(str(arrival.message_id)) == iso_to_ns(arrival.received_at)
    )
    push_stored = sorted(
        arrival.wall_ns - stored_ns[str(arrival.message_id)]
        for arrival in pushed.values()
        if str(arrival.message_id) in stored_ns
    )
    push_201 = sorted(
        pushed[seq].perf_ns - r.answer_ns for seq, r in ok_sends.items() if seq in pushed
    )
    push_start = sorted(
        pushed[seq].perf_ns - r.start_ns for seq, r in ok_sends.items() if seq in pushed
    )
    negative = sum(1 for v in push_201 if v < 0)
    # where the time goes, from B's own clock readings: receivedAt (B starts ingesting the
    # page), the event's timestamp (written in the ingest transaction), the first attempt's
    # startedAt (after the claim and the reads, just before signing and sending)
    first_attempt_ns = {
        str(d["eventId"]): iso_to_ns(d["attempts"][0]["startedAt"])
        for d in deliveries
        if d.get("attempts")
    }
    stage_ingest: list[int] = []
    stage_claim: list[int] = []
    stage_send: list[int] = []
    for arrival in pushed.values():
        stored = stored_ns.get(str(arrival.message_id))
        attempt = first_attempt_ns.get(arrival.webhook_id)
        if stored is None or attempt is None or arrival.event_at is None:
            continue
        event_ns = iso_to_ns(arrival.event_at)
        stage_ingest.append(event_ns - stored)
        stage_claim.append(attempt - event_ns)
        stage_send.append(arrival.wall_ns - attempt)
    for stage in (stage_ingest, stage_claim, stage_send):
        stage.sort()
    feed_stored: list[int] = []
    feed_201: list[int] = []
    feed_missing = 0
    if consumer is not None:
        seen = consumer.seen.get("timed", {})
        feed_missing = sum(1 for seq in ok_sends if seq not in seen)
        for seq, r in ok_sends.items():
            if seq not in seen:
                continue
            event = seen[seq][0]
            feed_201.append(event.answer_ns - r.answer_ns)
            if event.message_id in stored_ns:
                feed_stored.append(event.answer_ns + wall_minus_perf - stored_ns[event.message_id])
        feed_stored.sort()
        feed_201.sort()
    p50 = percentile(push_stored, 50)
    p99 = percentile(push_stored, 99)
    p50_ok = bool(push_stored) and p50 <= TARGET_P50_MS * 1e6
    p99_ok = bool(push_stored) and p99 <= TARGET_P99_MS * 1e6
    exactly_once = not missing and not unexpected and not tally.duplicates
    data_ok = exactly_once and not errors and not receiver.bad_signatures and feed_missing == 0
    feed_ratio = percentile(push_201, 50) / percentile(feed_201, 50) if feed_201 else math.nan

    rows = [
        Row("load average before / after (1, 5, 15 min)", f"{load_before}  |  {load_average()}"),
        Row("warm-up messages (untimed) / errors", f"{args.warmup} / {len(warm_errors)}"),
        Row("messages A -> B, one at a time, pause", f"{n:,}, {args.interval * 1000:g} ms"),
        Row("answers 201 / errors", f"{accepted:,} / {len(errors):,}"),
        Row(
            "webhook requests: ids / duplicates / bad signatures",
            f"{len(tally.unique):,} / {tally.duplicates:,} / {receiver.bad_signatures:,}",
        ),
        Row(
            "missing / without a 201",
            f"{len(missing):,} / {unexpected:,}"
            + ("" if complete else f" (gave up after {waited:.0f} s)"),
        ),
        Row(
            "exactly one delivery per message",
            "yes" if exactly_once else "no",
            "yes",
            check(exactly_once),
        ),
        Row("body's receivedAt = B's API receivedAt", f"{same_received_at:,} of {len(pushed):,}"),
        Row(
            "push: B stored -> receiver, p50",
            format_ms(p50),
            f"<= {TARGET_P50_MS:.0f} ms",
            check(p50_ok),
        ),
        Row(
            "push: B stored -> receiver, p99",
            format_ms(p99),
            f"<= {TARGET_P99_MS:.0f} ms",
            check(p99_ok),
        ),
        Row("push: B stored -> receiver, p50/p90/p99/max", spread(push_stored)),
        Row("push: A's 201 -> receiver, p50/p90/p99/max", spread(push_201)),
        Row("push: arrived before A's 201 (negative)", f"{negative:,}"),
        Row("push: A's request start -> receiver", spread(push_start)),
        Row("…B: receivedAt -> event written (ingest)", spread(stage_ingest)),
        Row("…B: event written -> attempt started", spread(stage_claim)),
        Row("…B: attempt started -> receiver", spread(stage_send)),
    ]
    if consumer is not None:
        rows += [
            Row("baseline pull: B stored -> feed answer", spread(feed_stored)),
            Row("baseline pull: A's 201 -> feed answer", spread(feed_201)),
            Row("baseline pull: events missing", f"{feed_missing:,}"),
            Row("push / pull, p50 from A's 201", f"{feed_ratio:.2f}"),
        ]
    rows += [
        Row("floor: bare POST start -> receiver (this process)", spread(floor)),
        *cpu.rows(wall),
    ]
    print_table(
        f"bench/push.py latency — {n:,} messages A -> B, webhook to a receiver in this process "
        f"(wall {wall:.1f} s)",
        rows,
    )
    print_send_errors(errors, warm_errors)
    if missing:
        print(f"missing seqs (first 20): {missing[:20]}")
    summary = {
        "count": n,
        "intervalMs": round(args.interval * 1000, 3),
        "sent201": accepted,
        "errors": len(errors),
        "delivered": len(pushed),
        "missing": len(missing),
        "duplicates": tally.duplicates,
        "badSignatures": receiver.bad_signatures,
        "storedToReceiver": spread_json(push_stored),
        "a201ToReceiver": spread_json(push_201),
        "negative": negative,
        "stages": {
            "receivedToEvent": spread_json(stage_ingest),
            "eventToAttempt": spread_json(stage_claim),
            "attemptToReceiver": spread_json(stage_send),
        },
        "feedStoredToAnswer": spread_json(feed_stored),
        "feed201ToAnswer": spread_json(feed_201),
        "feedMissing": feed_missing,
        "floor": spread_json(floor),
        "cpuSeconds": cpu.summary(),
        "load": [load_before, load_average()],
    }
    return PartResult(rows, summary, data_ok, {"latencyP50": p50_ok, "latencyP99": p99_ok})


# --------------------------------------------------------------------------- spiff


class TimedSpiffEngine(SpiffEngineBase):  # type: ignore[misc]  # an Any: see the import
    """The tests' SpiffWorkflow engine, noting (``time.time_ns``) when each message reached
    ``send`` (the request read, before correlating) and when each process completed (its
    workflow run to the end and stored, inside the request that delivered the message)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent_ns: dict[str, tuple[int, str | None]] = {}  # orderId -> (ns, messageId)
        self.completed_ns: dict[int, int] = {}  # process id -> ns

    def send(
        self,
        modified_message_name: str,
        body: dict[str, Any],
        *,
        time_to_live_in_seconds: int | None = None,
        message_instance_uuid: str | None = None,
    ) -> tuple[int, dict[str, Any]]:
        order = body.get("orderId")
        meta = body.get("_connector")
        if isinstance(order, str) and order not in self.sent_ns:
            message_id = meta.get("messageId") if isinstance(meta, dict) else None
            self.sent_ns[order] = (time.time_ns(), str(message_id) if message_id else None)
        answer: tuple[int, dict[str, Any]] = super().send(
            modified_message_name,
            body,
            time_to_live_in_seconds=time_to_live_in_seconds,
            message_instance_uuid=message_instance_uuid,
        )
        return answer

    def _run(self, instance: Any, workflow: Any) -> None:
        super()._run(instance, workflow)
        if instance.status == "complete":
            self.completed_ns.setdefault(instance.id, time.time_ns())


def spiff_webhook_toml(url: str) -> str:
    return (
        f'\n[[webhooks]]\nurl = {json.dumps(url)}\nformat = "spiff"\n'
        f'events = ["{EVENT_TYPE}"]\nfilter = {{ name = "{PAYMENT_NAME}" }}\n'
        f'headers = {{ "SpiffWorkflow-Api-Key" = {json.dumps(SPIFF_API_KEY)} }}\n'
    )


async def send_payments(
    session: aiohttp.ClientSession,
    pair: TwoConnectors,
    engine: TimedSpiffEngine,
    run_id: str,
    kind: str,
    count: int,
    interval: float,
) -> tuple[list[Sent], dict[int, int]]:
    """Per message: start an order's process (it waits for ``payment.received`` correlated
    on ``orderId``), then A sends the payment to B; a pause after each send. Returns the sends
    and the process id of each seq."""
    url = f"{pair.a.url}/api/v1/messages"
    headers = message_headers(pair.a.headers)
    results: list[Sent] = []
    processes: dict[int, int] = {}
    for seq in range(count):
        order = f"{run_id}-{kind}-{seq}"
        process = engine.start(SPIFF_PROCESS, {"orderId": order})
        if process.status != "waiting":
            raise BenchError(f"the process of order {order} is {process.status}, not waiting")
        processes[seq] = process.id
        body = {
            "recipients": [pair.address_b],
            "name": PAYMENT_NAME,
            "correlationKey": f"order-{order}",
            "content": {"orderId": order, "amount": 10, "bench": run_id, "kind": kind, "seq": seq},
        }
        raw = json.dumps(body, separators=(",", ":")).encode()
        sent = await post_message(
            session, url, headers, raw, seq, kind=kind, clock=time.perf_counter_ns, accepted=(201,)
        )
        results.append(sent)
        if interval > 0:
            await asyncio.sleep(interval)
    return results, processes


async def wait_for_both(
    receiver: Receiver,
    engine: TimedSpiffEngine,
    cluster: Cluster,
    kind: str,
    processes: Iterable[int],
    stall_timeout: float,
) -> bool:
    """Until the receiver has every message of ``kind`` and every process completed (or
    nothing moved for ``stall_timeout`` s). Polls this process's own state."""
    wanted = set(processes)
    last, last_progress = (-1, -1), time.monotonic()
    while True:
        cluster.check_alive()
        got = (receiver.count(kind), len(wanted & engine.completed_ns.keys()))
        if got[0] >= len(wanted) and got[1] == len(wanted):
            return True
        if got != last:
            last, last_progress = got, time.monotonic()
        elif time.monotonic() - last_progress > stall_timeout:
            log(
                f"giving up: receiver {got[0]}/{len(wanted)}, "
                f"processes completed {got[1]}/{len(wanted)} ({kind})"
            )
            return False
        await asyncio.sleep(0.05)


async def part_spiff(args: argparse.Namespace, run_id: str) -> PartResult:
    n = args.spiff_count
    secret = new_secret()
    receiver = Receiver(run_id)
    receiver.verify_with(secret)
    engine = TimedSpiffEngine()
    server = spiff_engine.SpiffServer(engine, api_key=SPIFF_API_KEY)
    await receiver.start()
    await server.start()
    load_before = load_average()
    try:
        with part_cluster(args, "spiff") as cluster:
            async with client_session(limit=16) as session:
                b_toml = spiff_webhook_toml(server.url) + webhook_toml(receiver.url, secret)
                pair = await start_pair(session, cluster, b_toml)
                b = pair.b
                warmup = max(args.warmup, 1)
                log(f"warm-up: {warmup} payments, awaited at the engine and the receiver")
                warm, warm_processes = await send_payments(
                    session, pair, engine, run_id, "spiffwarm", warmup, args.interval
                )
                if not await wait_for_both(
                    receiver, engine, cluster, "spiffwarm", warm_processes.values(), 60
                ):
                    raise BenchError(f"warm-up: not every payment arrived\n{b.proc.tail(40)}")

                log(
                    f"send {n} payments A -> B, one at a time, {args.interval * 1000:g} ms apart, "
                    "each after starting its order's process"
                )
                start_ns = time.perf_counter_ns()
                results, processes = await send_payments(
                    session, pair, engine, run_id, "spiff", n, args.interval
                )
                complete = await wait_for_both(
                    receiver, engine, cluster, "spiff", processes.values(), args.stall_timeout
                )
                wall = (time.perf_counter_ns() - start_ns) / 1e9
                await asyncio.sleep(args.linger)
                incoming = await b.incoming_messages(session, max_pages=n // 1000 + 50)
                listed = await b.get_json(session, "/api/v1/webhooks")
                formats = {str(h["format"]): str(h["id"]) for h in listed["items"]}
                spiff_deliveries = await all_deliveries(session, b, formats["spiff"])
                cluster.check_alive()
    finally:
        await server.stop()
        await receiver.stop()

    stored_ns = {
        str(item.get("id")): iso_to_ns(str(item["receivedAt"]))
        for item in incoming
        if isinstance(item.get("receivedAt"), str)
    }
    ok_sends = {r.seq: r for r in results if r.status == 201}
    errors = send_errors(results, (201,))
    spiff_done: list[int] = []  # B stored -> process completed
    to_engine: list[int] = []  # B stored -> the engine's send() called
    in_engine: list[int] = []  # send() called -> process completed
    not_completed = 0
    for seq in ok_sends:
        pid = processes[seq]
        sent = engine.sent_ns.get(f"{run_id}-spiff-{seq}")
        done = engine.completed_ns.get(pid)
        if done is None or sent is None or sent[1] not in stored_ns:
            not_completed += done is None
            continue
        stored = stored_ns[str(sent[1])]
        spiff_done.append(done - stored)
        to_engine.append(sent[0] - stored)
        in_engine.append(done - sent[0])
    for values in (spiff_done, to_engine, in_engine):
        values.sort()
    tally = receiver.tally("spiff")
    pushed = {a.seq: a for a in tally.unique.values() if a.seq is not None}
    plain = sorted(
        a.wall_ns - stored_ns[str(a.message_id)]
        for a in pushed.values()
        if str(a.message_id) in stored_ns
    )
    plain_missing = sum(1 for seq in ok_sends if seq not in pushed)
    engine_statuses = Counter(m.status for m in engine.messages)
    delivery_statuses = Counter(str(d["status"]) for d in spiff_deliveries)
    attempts = sum(len(d["attempts"]) for d in spiff_deliveries)
    p50_spiff, p50_plain = percentile(spiff_done, 50), percentile(plain, 50)
    ratio = p50_spiff / p50_plain if plain and spiff_done else math.nan
    data_ok = (
        complete
        and not errors
        and not not_completed
        and len(spiff_done) == len(ok_sends)
        and not plain_missing
        and not tally.duplicates
        and not receiver.bad_signatures
        and set(engine_statuses) == {"completed"}
    )
    rows = [
        Row("load average before / after (1, 5, 15 min)", f"{load_before}  |  {load_average()}"),
        Row(
            "warm-up payments (untimed) / errors", f"{len(warm)} / {len(send_errors(warm, (201,)))}"
        ),
        Row("payments A -> B, one at a time, pause", f"{n:,}, {args.interval * 1000:g} ms"),
        Row("answers 201 / errors", f"{len(ok_sends):,} / {len(errors):,}"),
        Row(
            "processes completed / not completed",
            f"{len(spiff_done):,} / {not_completed:,}" + ("" if complete else " (gave up waiting)"),
        ),
        Row(
            "engine messages by status (warm-up included)",
            ", ".join(f"{k} {v:,}" for k, v in sorted(engine_statuses.items())),
        ),
        Row(
            "spiff deliveries by status / attempts",
            ", ".join(f"{k} {v:,}" for k, v in sorted(delivery_statuses.items()))
            + f" / {attempts:,}",
        ),
        Row(
            "plain webhook: ids / missing / duplicates / bad signatures",
            f"{len(tally.unique):,} / {plain_missing:,} / {tally.duplicates:,} / "
            f"{receiver.bad_signatures:,}",
        ),
        Row("spiff: B stored -> process completed, p50/p90/p99/max", spread(spiff_done)),
        Row("…B stored -> engine handles the request", spread(to_engine)),
        Row("…engine: request -> process completed", spread(in_engine)),
        Row("plain webhook, same run: B stored -> receiver", spread(plain)),
        Row("spiff / plain, p50", f"{ratio:.2f}"),
    ]
    print_table(
        f"bench/push.py spiff — {n:,} payments A -> B, B's spiff webhook to a SpiffWorkflow "
        f"engine in this process, beside a plain webhook (wall {wall:.1f} s)",
        rows,
    )
    print_send_errors(errors, send_errors(warm, (201,)))
    summary = {
        "count": n,
        "intervalMs": round(args.interval * 1000, 3),
        "sent201": len(ok_sends),
        "errors": len(errors),
        "completed": len(spiff_done),
        "notCompleted": not_completed,
        "engineMessages": dict(engine_statuses),
        "spiffDeliveries": dict(delivery_statuses),
        "spiffAttempts": attempts,
        "storedToCompleted": spread_json(spiff_done),
        "storedToEngine": spread_json(to_engine),
        "engineToCompleted": spread_json(in_engine),
        "plainStoredToReceiver": spread_json(plain),
        "plainMissing": plain_missing,
        "duplicates": tally.duplicates,
        "badSignatures": receiver.bad_signatures,
        "ratioP50": json_number(ratio, 3),
        "load": [load_before, load_average()],
    }
    return PartResult(rows, summary, data_ok, {})


# --------------------------------------------------------------------------- throughput


async def part_throughput(args: argparse.Namespace, run_id: str) -> PartResult:
    n = args.backlog
    receiver = Receiver(run_id, keep_bodies=True)
    await receiver.start()
    load_before = load_average()
    try:
        with part_cluster(args, "throughput") as cluster:
            async with client_session(limit=args.concurrency + 8) as session:
                pair = await start_pair(session, cluster)
                b = pair.b
                since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
                hook = await call(
                    session,
                    b,
                    "POST",
                    "/api/v1/webhooks",
                    {"url": receiver.url, "events": [EVENT_TYPE], "enabled": False},
                    expect=(201,),
                )
                hook_id, secret = str(hook["id"]), str(hook["secret"])
                receiver.verify_with(secret)
                results, backlog_seconds = await send_backlog(
                    session,
                    pair,
                    cluster,
                    run_id,
                    "backlog",
                    n,
                    args.concurrency,
                    args.stall_timeout,
                )
                accepted = n - len(send_errors(results))
                before = await b.get_json(session, f"/api/v1/webhooks/{hook_id}")
                pending_before = int(before["health"]["pending"])

                log(f"enable the webhook and replay: {accepted:,} deliveries due at once")
                cpu = CpuMeter({"connector B": b.proc.pid})
                cpu.start()
                t0 = time.perf_counter_ns()
                await call(session, b, "PATCH", f"/api/v1/webhooks/{hook_id}", {"enabled": True})
                replay = await call(
                    session,
                    b,
                    "POST",
                    f"/api/v1/webhooks/{hook_id}/replay",
                    {"since": since.isoformat()},
                    expect=(202,),
                )
                replay_s = (time.perf_counter_ns() - t0) / 1e9
                replayed = int(replay["events"])
                complete, waited = await wait_for_receiver(
                    receiver, cluster, "backlog", accepted, stall_timeout=args.stall_timeout
                )
                cpu.stop()
                await asyncio.sleep(args.linger)
                after = await b.get_json(session, f"/api/v1/webhooks/{hook_id}")
                tally = receiver.tally("backlog")
                bodies = list(tally.bodies)
                cluster.check_alive()

                log(f"baseline: a bare aiohttp sender in its own process, {PER_ENDPOINT} in flight")
                sub_failed, sub_client_s = await bare_send_process(
                    receiver.url, secret, bodies, PER_ENDPOINT, "sub", cluster.root
                )
                await wait_for_receiver(
                    receiver, cluster, f"{BARE_PREFIX}sub", len(bodies), stall_timeout=30
                )
                log(f"the same sender in this process (the receiver's), {PER_ENDPOINT} in flight")
                in_failed, in_client_s = await bare_send(
                    receiver.url, secret, bodies, PER_ENDPOINT, "in"
                )
                await wait_for_receiver(
                    receiver, cluster, f"{BARE_PREFIX}in", len(bodies), stall_timeout=30
                )
    finally:
        await receiver.stop()

    drain_s = (tally.last_new_ns - t0) / 1e9
    from_patch = len(tally.unique) / drain_s if drain_s > 0 else math.nan
    rate = tally.rate()
    sub = receiver.tally(f"{BARE_PREFIX}sub")
    inproc = receiver.tally(f"{BARE_PREFIX}in")
    base_rate, in_rate = sub.rate(), inproc.rate()
    ratio = rate / base_rate if base_rate > 0 else math.nan
    ratio_ok = ratio >= TARGET_RATIO
    sizes = sorted(len(body) for body in bodies)
    cpu_b = cpu.used.get("connector B", math.nan)
    data_ok = (
        complete
        and replayed == accepted
        and len(tally.unique) == accepted
        and not receiver.bad_signatures
        and not sub_failed
        and not in_failed
        and pending_before == 0
    )
    rows = [
        Row("load average before / after (1, 5, 15 min)", f"{load_before}  |  {load_average()}"),
        Row("backlog: messages accepted by A / at B", f"{accepted:,} of {n:,} / {accepted:,}"),
        Row("backlog built in (webhook disabled)", f"{backlog_seconds:.1f} s"),
        Row("deliveries pending while disabled", f"{pending_before:,}", "0"),
        Row("enable + replay answered in / events replayed", f"{replay_s:.2f} s / {replayed:,}"),
        Row(
            "delivered: ids / duplicates / bad signatures",
            f"{len(tally.unique):,} / {tally.duplicates:,} / {receiver.bad_signatures:,}"
            + ("" if complete else f" (gave up after {waited:.0f} s)"),
        ),
        Row("body size p50 / max", f"{percentile(sizes, 50):,.0f} / {sizes[-1]:,} B"),
        Row("connector: enable -> last delivery", f"{drain_s:.2f} s ({from_patch:,.0f} /s)"),
        Row("connector: deliveries/s, first -> last arrival", f"{rate:,.0f} /s"),
        Row(
            f"baseline: bare aiohttp sender, own process, {PER_ENDPOINT} in flight",
            f"{base_rate:,.0f} /s (client {len(bodies) / sub_client_s:,.0f} /s)",
        ),
        Row(
            "connector / baseline",
            f"{ratio:.2f}",
            f">= {TARGET_RATIO}",
            check(ratio_ok),
        ),
        Row(
            "reference: the same sender in this process",
            f"{in_rate:,.0f} /s (client {len(bodies) / in_client_s:,.0f} /s; "
            f"connector / it: {rate / in_rate:.2f})",
        ),
        Row(
            "connector B CPU during the drain",
            f"{cpu_b:.2f} s ({cpu_b / drain_s:.0%} of a core, "
            f"{cpu_b / max(1, len(tally.unique)) * 1e3:.2f} ms a delivery)",
        ),
        Row("CPU bench process (receiver) during the drain", f"{cpu.used['bench client']:.2f} s"),
        Row(
            "webhook health after: pending / dead / breaker",
            f"{after['health']['pending']} / {after['health']['dead']} / "
            f"{after['health']['breaker']}",
        ),
    ]
    print_table(
        f"bench/push.py throughput — a backlog of {n:,} deliveries to a fast receiver "
        f"(answers 204 at once)",
        rows,
    )
    print_send_errors(send_errors(results))
    summary = {
        "backlog": n,
        "accepted": accepted,
        "replayed": replayed,
        "delivered": len(tally.unique),
        "duplicates": tally.duplicates,
        "badSignatures": receiver.bad_signatures,
        "enableToLastSeconds": round(drain_s, 3),
        "ratePerS": json_number(rate, 1),
        "rateFromEnablePerS": json_number(from_patch, 1),
        "baselinePerS": json_number(base_rate, 1),
        "ratio": json_number(ratio, 3),
        "inProcessBaselinePerS": json_number(in_rate, 1),
        "cpuBSeconds": json_number(cpu_b, 2),
        "bodyBytesP50": percentile(sizes, 50),
        "load": [load_before, load_average()],
    }
    return PartResult(rows, summary, data_ok, {"throughputRatio": ratio_ok})


# --------------------------------------------------------------------------- outage


@dataclass
class HealthSample:
    at: float  # seconds since the receiver stopped
    breaker: str
    streak: int
    paused_until: str | None
    pending: int


async def sample_health(
    session: aiohttp.ClientSession,
    b: Connector,
    webhook_id: str,
    down_perf: float,
    out: list[HealthSample],
) -> None:
    """GET the webhook every second until cancelled."""
    while True:
        try:
            view = await b.get_json(session, f"/api/v1/webhooks/{webhook_id}")
            health = view["health"]
            out.append(
                HealthSample(
                    time.perf_counter() - down_perf,
                    str(health["breaker"]),
                    int(health["failureStreak"]),
                    health.get("pausedUntil"),
                    int(health["pending"]),
                )
            )
        except (aiohttp.ClientError, TimeoutError, OSError, BenchError) as exc:
            log(f"health sample failed: {exc}")
        await asyncio.sleep(1.0)


def iso_to_s(value: str) -> float:
    return iso_to_ns(value) / 1e9


def offsets_text(offsets: Sequence[float]) -> str:
    """``+0.1 s x8, +5.2 s, ...``: attempt times, those within 0.5 s of each other grouped."""
    groups: list[tuple[float, int]] = []
    for t in sorted(offsets):
        if groups and t - groups[-1][0] < 0.5:
            groups[-1] = (groups[-1][0], groups[-1][1] + 1)
        else:
            groups.append((t, 1))
    cells = [f"+{t:.1f} s" + (f" x{k}" if k > 1 else "") for t, k in groups]
    if len(cells) > 8:  # a probe every breaker.max seconds: the first few, the last two
        cells = [*cells[:5], f"... ({len(cells) - 7} more)", *cells[-2:]]
    return ", ".join(cells)


async def part_outage(args: argparse.Namespace, run_id: str) -> PartResult:
    p = args.events
    breaker_max = args.breaker_max if args.breaker_max is not None else BREAKER["max"]
    secret = new_secret()
    receiver = Receiver(run_id, delay=args.receiver_delay)
    receiver.verify_with(secret)
    await receiver.start()
    samples: list[HealthSample] = []
    sampler: asyncio.Task[None] | None = None
    load_before = load_average()
    load_during = "-"
    try:
        with part_cluster(args, "outage") as cluster:
            async with client_session(limit=args.concurrency + 8) as session:
                b_toml = delivery_toml(args.breaker_max) + webhook_toml(receiver.url, secret)
                pair = await start_pair(session, cluster, b_toml)
                b = pair.b
                listed = await b.get_json(session, "/api/v1/webhooks")
                hook_id = str(listed["items"][0]["id"])
                warm = await send_paced(
                    session, pair.a, pair.address_b, run_id, "warmup", 10, 1, 0.02
                )
                ok, _ = await wait_for_receiver(receiver, cluster, "warmup", 10, stall_timeout=60)
                if not ok or send_errors(warm, (201,)):
                    raise BenchError(f"warm-up: the receiver got {receiver.count('warmup')} of 10")

                log(f"receiver down (connection refused) for {args.outage:g} s")
                await receiver.stop()
                down_perf, down_wall = time.perf_counter(), time.time()
                sampler = asyncio.create_task(
                    sample_health(session, b, hook_id, down_perf, samples)
                )
                results, stored_s = await send_backlog(
                    session,
                    pair,
                    cluster,
                    run_id,
                    "outage",
                    p,
                    args.concurrency,
                    args.stall_timeout,
                )
                accepted = p - len(send_errors(results))
                log(f"{accepted:,} events stored at B {stored_s:.1f} s into the outage")
                while (left := down_perf + args.outage - time.perf_counter()) > 0:
                    cluster.check_alive()
                    await asyncio.sleep(min(left, 5.0))
                load_during = load_average()
                at_return = samples[-1] if samples else None

                receiver.reset_load()
                await receiver.start()
                up_perf, up_wall = time.perf_counter(), time.time()
                log(f"receiver back on port {receiver.port}; waiting for {accepted:,} events")
                complete, waited = await wait_for_receiver(
                    receiver,
                    cluster,
                    "outage",
                    accepted,
                    stall_timeout=max(args.stall_timeout, breaker_max + 60),
                )
                done_perf = time.perf_counter()
                await asyncio.sleep(args.linger)
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)
                deliveries = await all_deliveries(session, b, hook_id)
                cluster.check_alive()
    finally:
        if sampler is not None:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        await receiver.stop()

    tally = receiver.tally("outage")
    outage_s = up_perf - down_perf
    first_after = (tally.first_ns / 1e9 - up_perf) if tally.requests else math.nan
    all_after = (tally.last_new_ns / 1e9 - up_perf) if tally.requests else math.nan
    drain_rate = tally.rate()
    during = [
        iso_to_s(a["startedAt"]) - down_wall
        for d in deliveries
        for a in d["attempts"]
        if down_wall <= iso_to_s(a["startedAt"]) < up_wall
    ]
    after_attempts = sum(
        1 for d in deliveries for a in d["attempts"] if iso_to_s(a["startedAt"]) >= up_wall
    )
    statuses = Counter(str(d["status"]) for d in deliveries)
    opened = [s for s in samples if s.breaker != "closed"]
    next_probe = (
        iso_to_s(at_return.paused_until) - up_wall
        if at_return is not None and at_return.paused_until
        else math.nan
    )
    per_second = Counter(int(t / 1e9 - up_perf) for t in receiver.arrival_ns)
    peak_per_s = max(per_second.values(), default=0)
    recovered_ok = complete and all_after <= TARGET_RECOVERY_S
    bounded_ok = receiver.max_in_flight <= PER_ENDPOINT
    data_ok = (
        complete
        and not receiver.bad_signatures
        and len(tally.unique) == accepted
        and statuses.get("succeeded", 0) == len(deliveries)
    )
    breaker_text = (
        f"failures {BREAKER['failures']}, first {BREAKER['first']:g} s, max {breaker_max:g} s"
        + ("" if args.breaker_max is None else " (--breaker-max)")
    )
    rows = [
        Row(
            "load average before / at the return / after",
            f"{load_before}  |  {load_during}  |  {load_average()}",
        ),
        Row("delivery settings", f"defaults; breaker {breaker_text}"),
        Row("events pending during the outage", f"{accepted:,} of {p:,} sent"),
        Row("…all stored at B after the receiver stopped", f"{stored_s:.1f} s"),
        Row("outage (receiver down -> back, connection refused)", f"{outage_s:,.1f} s"),
        Row("requests made during the outage (B's attempt log)", f"{len(during):,}"),
        Row("…at (since the receiver stopped)", offsets_text(during) or "-"),
        Row(
            "breaker at the return: state, failures in a row",
            f"{at_return.breaker}, {at_return.streak}" if at_return else "-",
        ),
        Row(
            "…next probe due after the return (pausedUntil)",
            f"{next_probe:,.1f} s" if not math.isnan(next_probe) else "-",
        ),
        Row("first request after the return", f"{first_after:,.1f} s"),
        Row(
            "all delivered after the return",
            f"{all_after:,.1f} s" + ("" if complete else f" (gave up after {waited:.0f} s)"),
            f"<= {TARGET_RECOVERY_S:.0f} s",
            check(recovered_ok),
        ),
        Row("drain rate, first -> last after the return", f"{drain_rate:,.0f} /s"),
        Row(
            "receiver: most requests in flight at once",
            f"{receiver.max_in_flight}",
            f"<= {PER_ENDPOINT} (per_endpoint)",
            check(bounded_ok),
        ),
        Row(
            "receiver: connections used / peak requests in 1 s",
            f"{len(receiver.connections)} / {peak_per_s:,}",
        ),
        Row("receiver: work per request (--receiver-delay)", f"{args.receiver_delay * 1e3:g} ms"),
        Row(
            "requests after the return: total / ids / duplicates",
            f"{tally.requests:,} / {len(tally.unique):,} / {tally.duplicates:,}",
        ),
        Row("attempts after the return (B's log)", f"{after_attempts:,}"),
        Row(
            "deliveries at the end by status",
            ", ".join(f"{k} {v:,}" for k, v in sorted(statuses.items())),
        ),
        Row(
            "health samples with the breaker not closed",
            f"{len(opened)} of {len(samples)}",
        ),
    ]
    print_table(
        f"bench/push.py outage — {p:,} events pending while the receiver is down "
        f"{args.outage:g} s (took {done_perf - down_perf:,.0f} s in all)",
        rows,
    )
    print_send_errors(send_errors(results))
    summary = {
        "events": p,
        "accepted": accepted,
        "outageSeconds": round(outage_s, 1),
        "breakerMax": breaker_max,
        "storedSeconds": round(stored_s, 2),
        "requestsDuringOutage": len(during),
        "attemptOffsets": [round(t, 1) for t in sorted(during)],
        "nextProbeAfterReturnSeconds": json_number(next_probe, 1),
        "firstAfterReturnSeconds": json_number(first_after, 2),
        "allAfterReturnSeconds": json_number(all_after, 2),
        "drainPerS": json_number(drain_rate, 1),
        "maxInFlight": receiver.max_in_flight,
        "connections": len(receiver.connections),
        "peakPerSecond": peak_per_s,
        "requestsAfterReturn": tally.requests,
        "duplicates": tally.duplicates,
        "statuses": dict(statuses),
        "badSignatures": receiver.bad_signatures,
        "load": [load_before, load_during, load_average()],
    }
    return PartResult(
        rows, summary, data_ok, {"recovery60s": recovered_ok, "inFlightBounded": bounded_ok}
    )


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--parts", default=",".join(PARTS), help="comma-separated: " + ",".join(PARTS)
    )
    parser.add_argument("--count", type=int, default=1000, help="latency: messages (1,000)")
    parser.add_argument(
        "--interval", type=float, default=0.02, help="latency: pause after each send (0.02 s)"
    )
    parser.add_argument("--warmup", type=int, default=20, help="latency: warm-up messages (20)")
    parser.add_argument(
        "--no-feed", action="store_true", help="latency: no event-feed baseline alongside"
    )
    parser.add_argument(
        "--spiff-count", type=int, default=200, help="spiff: payments to the engine (200)"
    )
    parser.add_argument(
        "--backlog", type=int, default=5000, help="throughput: deliveries in the backlog (5,000)"
    )
    parser.add_argument("--events", type=int, default=5000, help="outage: pending events (5,000)")
    parser.add_argument(
        "--outage", type=float, default=600.0, help="outage: seconds the receiver is down (600)"
    )
    parser.add_argument(
        "--breaker-max",
        type=float,
        default=None,
        help="outage: delivery.breaker.max in seconds (default: the product's, 300)",
    )
    parser.add_argument(
        "--receiver-delay",
        type=float,
        default=0.002,
        help="outage: seconds of work the receiver does per request (0.002)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=32, help="senders A -> B for the backlogs (32)"
    )
    parser.add_argument(
        "--stall-timeout", type=float, default=60.0, help="give up after this long w/o progress"
    )
    parser.add_argument(
        "--linger", type=float, default=1.0, help="seconds to wait for late duplicates (1)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 100 / 50 / 500 / 500 events, 20 s outage",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="run the connectors under cProfile, profiles in DIR/<part>/ (slows them down)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dirs and logs")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    args.parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown or not args.parts:
        parser.error(f"--parts takes {', '.join(PARTS)}; got {args.parts}")
    if args.quick:
        args.count = min(args.count, 100)
        args.spiff_count = min(args.spiff_count, 50)
        args.warmup = min(args.warmup, 5)
        args.backlog = min(args.backlog, 500)
        args.events = min(args.events, 500)
        args.outage = min(args.outage, 20.0)
    if min(args.count, args.spiff_count, args.backlog, args.events, args.concurrency) <= 0:
        parser.error(
            "--count, --spiff-count, --backlog, --events and --concurrency must be positive"
        )
    if args.outage < 0 or args.interval < 0 or args.receiver_delay < 0 or args.warmup < 0:
        parser.error("--outage, --interval, --receiver-delay and --warmup may not be negative")
    return args


async def main(args: argparse.Namespace) -> int:
    info = machine_info()
    print(header_line(info), flush=True)
    print(f"# load average (1, 5, 15 min): {load_average()}", flush=True)
    run_id = os.urandom(6).hex()
    runners = {
        "latency": part_latency,
        "spiff": part_spiff,
        "throughput": part_throughput,
        "outage": part_outage,
    }
    results: dict[str, PartResult] = {}
    for part in PARTS:
        if part in args.parts:
            log(f"===== part {part} =====")
            results[part] = await runners[part](args, run_id)
    targets = {k: v for r in results.values() for k, v in r.targets.items()}
    data_ok = all(r.data_ok for r in results.values())
    print_summary(
        {
            **summary_head("push", info, parts=list(results)),
            **{part: r.summary for part, r in results.items()},
            "dataOk": data_ok,
            "targetsMet": targets,
        }
    )
    if args.profile is not None:
        log(f"profiles (pstats): {', '.join(str(p) for p in sorted(args.profile.rglob('*.prof')))}")
    if not data_ok:
        return 1
    return 1 if args.strict and not all(targets.values()) else 0


if __name__ == "__main__":
    arguments = parse_args()
    sys.exit(run_main(lambda: main(arguments)))
