"""kill -9 at random moments: nothing accepted is lost, nothing is duplicated.

Real processes (a backbone and two connectors, ``python -m connector.cli``), real sockets and
real SIGKILLs. Counts are read from the connectors' SQLite files (read-only) and over the REST
API. Every assertion message carries the random seed and the tail of each process's output.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
from typing import Any

import aiohttp
import pytest

from tests.e2e.helpers import eventually
from tests.reliability.harness import Cluster, Connector, kill_when

ACCEPTED = (201, 202)
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30)


class Sends:
    """What the business system was told for each sequence number ``n``."""

    def __init__(self) -> None:
        self.status: dict[int, int | None] = {}  # None: no answer (connection died)
        self.message_id: dict[int, str] = {}
        self.errors: dict[int, str] = {}
        self.open = 0  # requests in flight now

    @property
    def accepted(self) -> set[int]:
        return {n for n, status in self.status.items() if status in ACCEPTED}

    def summary(self) -> str:
        counts = collections.Counter(self.status.values())
        return f"answers: {dict(counts)}; some errors: {list(self.errors.items())[:5]}"


async def send_all(
    http: aiohttp.ClientSession,
    sender: Connector,
    recipient: str,
    numbers: range,
    *,
    respond_async: bool = False,
    concurrency: int = 16,
    pace: float = 0.0,
    gate: asyncio.Event | None = None,
    sends: Sends | None = None,
    idempotency_prefix: str | None = None,
) -> Sends:
    """POST one message per ``n`` (``{"n": n}``), ``concurrency`` at a time.

    ``pace`` spreads the starts (message i starts no earlier than i * pace seconds in);
    ``gate``, when given, is awaited before each request (cleared while the sender is down).
    A request that dies with the connection is recorded as no answer, never retried.
    With ``idempotency_prefix``, each request carries ``Idempotency-Key: <prefix><n>``.
    """
    sends = sends or Sends()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in numbers:
        queue.put_nowait(n)
    headers = dict(sender.headers)
    if respond_async:
        headers["Prefer"] = "respond-async"
    started = time.monotonic()

    async def worker() -> None:
        while not queue.empty():
            n = queue.get_nowait()
            delay = started + (n - numbers.start) * pace - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if gate is not None:
                await asyncio.wait_for(gate.wait(), 60)
            body = {"recipients": [recipient], "content": {"n": n}}
            keyed = headers
            if idempotency_prefix is not None:
                keyed = {**headers, "Idempotency-Key": f"{idempotency_prefix}{n}"}
            sends.open += 1
            try:
                async with http.post(
                    sender.url + "/api/v1/messages",
                    json=body,
                    headers=keyed,
                    timeout=REQUEST_TIMEOUT,
                ) as response:
                    sends.status[n] = response.status
                    answer = await response.json(content_type=None)
                    if response.status in ACCEPTED:
                        sends.message_id[n] = answer["id"]
                    else:
                        sends.errors[n] = str(answer)
            except (aiohttp.ClientError, TimeoutError) as exc:
                sends.status.setdefault(n, None)
                sends.errors[n] = f"{type(exc).__name__}: {exc}"
            finally:
                sends.open -= 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sends


async def reap(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` if it still runs and wait for it (a failing test leaves nothing behind)."""
    if not task.done():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def incoming_numbers(
    http: aiohttp.ClientSession, node: Connector
) -> tuple[collections.Counter[int], list[dict[str, Any]]]:
    """How often each ``n`` is among ``node``'s incoming messages (REST API), and the items."""
    items = await node.list_messages(http, "incoming")
    numbers: collections.Counter[int] = collections.Counter()
    for item in items:
        content = item.get("content") or {}
        if "n" in content:
            numbers[content["n"]] += 1
    return numbers, items


async def incoming_count(node: Connector) -> int:
    count: int = await node.scalar("SELECT count(*) FROM messages WHERE direction = 'incoming'")
    return count


async def wait_settled(
    node: Connector, expected: int, cluster: Cluster, what: str, within: float = 45.0
) -> None:
    """Wait until ``node`` holds ``expected`` incoming messages and still does 2 s later."""
    try:
        await eventually(
            lambda: _equals(incoming_count(node), expected), what, within, interval=0.25
        )
    except AssertionError as exc:
        have = await incoming_count(node)
        raise AssertionError(cluster.report(f"{exc}: {node.name} has {have}")) from None
    await asyncio.sleep(2.0)
    have = await incoming_count(node)
    assert have == expected, cluster.report(f"{what}: count moved on to {have}")


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def check_receiver(
    http: aiohttp.ClientSession, node: Connector, cluster: Cluster, context: str
) -> collections.Counter[int]:
    """No duplicate ids, one ``message.received`` event per message, nothing rejected."""
    duplicates = await node.query(
        "SELECT id, count(*) FROM messages WHERE direction = 'incoming'"
        " GROUP BY id HAVING count(*) > 1"
    )
    assert not duplicates, cluster.report(f"{context}: duplicate incoming ids {duplicates[:5]}")
    total = await incoming_count(node)
    events = await node.scalar("SELECT count(*) FROM events WHERE type = 'message.received'")
    distinct = await node.scalar(
        "SELECT count(DISTINCT message_id) FROM events WHERE type = 'message.received'"
    )
    assert events == distinct == total, cluster.report(
        f"{context}: {total} incoming messages but {events} message.received events"
        f" for {distinct} distinct messages"
    )
    statuses = dict(
        await node.query(
            "SELECT status, count(*) FROM messages WHERE direction = 'incoming' GROUP BY status"
        )
    )
    assert set(statuses) <= {"received"}, cluster.report(f"{context}: statuses {statuses}")
    numbers, _ = await incoming_numbers(http, node)
    twice = {n: c for n, c in numbers.items() if c > 1}
    assert not twice, cluster.report(f"{context}: arrived more than once: {twice}")
    return numbers


async def outgoing_queued(node: Connector) -> int:
    count: int = await node.scalar(
        "SELECT count(*) FROM messages WHERE direction = 'outgoing' AND status = 'queued'"
    )
    return count


async def wait_drained(node: Connector, cluster: Cluster, context: str) -> None:
    """Wait until nothing outgoing is queued at ``node`` (the outbox sent everything)."""

    async def drained() -> bool:
        return await outgoing_queued(node) == 0

    try:
        # The outbox retries with jittered backoff; a kill mid-request defers the first retry
        # by request_timeout + 1 s.
        await eventually(drained, f"{node.name}'s outbox to drain", 60, interval=0.25)
    except AssertionError as exc:
        rows = await node.query("SELECT attempts, next_attempt_at, last_error FROM outbox LIMIT 5")
        raise AssertionError(cluster.report(f"{context}: {exc}; outbox rows: {rows}")) from None


async def check_sender_finished(node: Connector, cluster: Cluster, context: str) -> None:
    """Nothing left queued or in the outbox; every outgoing message sent or delivered."""
    await wait_drained(node, cluster, context)
    statuses = dict(
        await node.query(
            "SELECT status, count(*) FROM messages WHERE direction = 'outgoing' GROUP BY status"
        )
    )
    errors = await node.query(
        "SELECT id, status, error FROM messages"
        " WHERE direction = 'outgoing' AND status NOT IN ('sent', 'delivered') LIMIT 3"
    )
    assert set(statuses) <= {"sent", "delivered"}, cluster.report(
        f"{context}: outgoing statuses at {node.name}: {statuses}; e.g. {errors}"
    )
    left = await node.scalar("SELECT count(*) FROM outbox")
    assert left == 0, cluster.report(f"{context}: {left} outbox entries left at {node.name}")


async def unrecorded_sends(cluster: Cluster, sender: Connector) -> int:
    """How many of ``sender``'s messages the platform holds that ``sender`` has not recorded.

    Positive only between the platform taking a message and the sender committing that it
    did (or while a later attempt is still to come). The platform is read first: its count
    only grows, so a positive answer means the gap existed when the sender was read.
    """
    rows = await cluster.query_backbone(
        "SELECT count(*) FROM messages WHERE sender = ?", sender.address
    )
    recorded: int = await sender.scalar(
        "SELECT count(*) FROM messages WHERE direction = 'outgoing' AND status != 'queued'"
    )
    return int(rows[0][0]) - recorded


async def stored_unacked(cluster: Cluster, receiver: Connector) -> int:
    """How many messages ``receiver`` has stored that the platform still holds unacknowledged.

    Positive only between the receiver's commit of a batch and the platform's ack of it. The
    receiver is read first: what it stored stays stored, so an id still in the platform inbox
    afterwards was stored and not yet acknowledged at that moment.
    """
    stored = {
        row[0]
        for row in await receiver.query("SELECT id FROM messages WHERE direction = 'incoming'")
    }
    pending = await cluster.query_backbone(
        "SELECT message_id FROM inbox WHERE recipient = ? AND kind = 'message'",
        receiver.address,
    )
    return sum(1 for (message_id,) in pending if message_id in stored)


# -- 1. crash during sync ------------------------------------------------------------------------


async def test_receiver_killed_during_sync_loses_and_duplicates_nothing(
    cluster: Cluster,
) -> None:
    """B is killed at least 5 times while A's 500 messages come in; B ends with each once.

    Each kill comes at a random moment, aimed (when it shows up within a second or so) at the
    gap between B committing a batch and the platform taking B's ack of it.
    """
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    context = f"seed {seed}"
    await cluster.start_backbone()
    a, b = await cluster.start_connectors("a", "b")
    http = cluster.http
    total = 500

    # Paced over ~12 s so that B receives (store+commit, then ack) throughout the kills.
    sender = asyncio.create_task(send_all(http, a, b.address, range(total), pace=0.025))
    kills: list[tuple[int, int]] = []  # (B's incoming count, stored but unacked) at each kill
    recoveries: list[float] = []
    try:
        deadline = time.monotonic() + 75
        while (len(kills) < 5 or not sender.done()) and len(kills) < 12:
            assert time.monotonic() < deadline, cluster.report(f"{context}: kill loop too slow")
            await asyncio.sleep(rng.uniform(0.05, 1.0))
            await kill_when(b, lambda: stored_unacked(cluster, b), rng.uniform(0.2, 1.5))
            killed_at = time.monotonic()
            kills.append((await incoming_count(b), await stored_unacked(cluster, b)))
            await cluster.revive(b)
            recoveries.append(time.monotonic() - killed_at)
        sends = await asyncio.wait_for(sender, 60)
    finally:
        await reap(sender)
    context += f"; kills at (B count, stored-unacked): {kills}"

    assert sends.accepted == set(range(total)), cluster.report(
        f"{context}: A did not accept every send: {sends.summary()}"
    )
    await wait_settled(b, total, cluster, f"{context}: B to hold {total} messages")
    numbers = await check_receiver(http, b, cluster, context)
    assert set(numbers) == set(range(total)), cluster.report(
        f"{context}: missing n: {sorted(set(range(total)) - set(numbers))[:20]}"
    )
    assert sum(numbers.values()) == total
    print(f"{context}; kill -> healthy: {[round(r, 2) for r in recoveries]} s")


# -- 2. crash while the outbox drains ------------------------------------------------------------


@pytest.mark.parametrize("sealed_at", ["accept", "outbox"])
async def test_sender_killed_while_outbox_drains(cluster: Cluster, sealed_at: str) -> None:
    """Sends accepted with ``Prefer: respond-async`` reach B once although A dies mid-drain.

    The backbone is down while the 300 sends are accepted (all 202), so they stay queued and
    pile up failed attempts; their jittered backoff spreads the drain over several seconds
    once it is back, and A is killed during it, each kill aimed (when it shows up) at the gap
    between the platform taking a message and A recording it. B is offline meanwhile, so no
    delivery receipt can tidy up after A: its own records alone must be right.

    ``accept``: B's keys are known (a first send looked them up), so each envelope is sealed
    and stored when accepted. ``outbox``: they are not, so the outbox job seals each envelope
    itself once the platform answers again.
    """
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    context = f"seed {seed}, sealed at {sealed_at}"
    backbone = await cluster.start_backbone()
    a, b = await cluster.start_connectors("a", "b")
    http = cluster.http
    total = 300
    expected = set(range(total))
    if sealed_at == "accept":
        warmup = await send_all(http, a, b.address, range(-1, 0))
        assert warmup.status == {-1: 201}, cluster.report(f"warm-up: {warmup.summary()}")
        expected.add(-1)

    await b.stop()
    await backbone.stop()
    sends = await send_all(http, a, b.address, range(total), respond_async=True)
    assert set(sends.status.values()) == {202}, cluster.report(
        f"{context}: respond-async must answer 202: {sends.summary()}"
    )
    # A few failed attempts each: the backoff grows (full jitter, doubling) and spreads the
    # drain over several seconds. The outbox drains a due batch in well under a second, so a
    # shorter outage left too few moments to kill A in.
    await asyncio.sleep(3.0)
    await cluster.revive(backbone)

    kills: list[tuple[int, int]] = []  # (A's queued, sent but unrecorded) at each kill
    deadline = time.monotonic() + 45
    while len(kills) < 8 and time.monotonic() < deadline:
        await asyncio.sleep(rng.uniform(0.05, 0.8))
        if await outgoing_queued(a) == 0:
            break
        await kill_when(a, lambda: unrecorded_sends(cluster, a), 3.0)
        kills.append((await outgoing_queued(a), await unrecorded_sends(cluster, a)))
        await cluster.revive(a)
    context += f"; A killed at (queued, unrecorded): {kills}"
    assert len(kills) >= 2, cluster.report(f"{context}: the outbox drained before the kills")
    assert any(unrecorded for _, unrecorded in kills), cluster.report(
        f"{context}: no kill hit a send the platform took but A had not recorded"
    )

    await wait_drained(a, cluster, context)
    await cluster.revive(b)
    await wait_settled(b, len(expected), cluster, f"{context}: B to hold {len(expected)}")
    numbers = await check_receiver(http, b, cluster, context)
    assert set(numbers) == expected, cluster.report(
        f"{context}: missing n: {sorted(expected - set(numbers))[:20]}"
    )
    await check_sender_finished(a, cluster, context)
    print(context)


# -- 3. crash with synchronous sends in flight ---------------------------------------------------


async def test_sender_killed_with_requests_in_flight(cluster: Cluster) -> None:
    """Without ``Prefer`` the send is tried during the request; A dies with requests open.

    Each kill comes at a random moment, aimed (when it shows up) at the gap between the
    platform taking a message and A recording it. Whatever was answered 201/202 arrives
    exactly once; what got no answer may arrive, but nothing arrives twice, and A sends
    everything it accepted.
    """
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    context = f"seed {seed}"
    await cluster.start_backbone()
    a, b = await cluster.start_connectors("a", "b")
    http = cluster.http
    # Enough for the kills to come while sending: each cycle sends for at most 2.7 s (a pause
    # of up to 1.2 s, then up to 1.5 s until the kill), about 90 requests at this pace, and
    # the gate holds the rest while A is down. 300 could all go in three cycles.
    total = 450
    gate = asyncio.Event()
    gate.set()

    sends = Sends()
    sender = asyncio.create_task(
        send_all(http, a, b.address, range(total), pace=0.03, gate=gate, sends=sends)
    )
    kills: list[tuple[int, int]] = []  # (requests open, sent but unrecorded) at each kill
    try:
        deadline = time.monotonic() + 60
        while not sender.done() and len(kills) < 8 and time.monotonic() < deadline:
            await asyncio.sleep(rng.uniform(0.2, 1.2))
            if sender.done():
                break
            await kill_when(a, lambda: unrecorded_sends(cluster, a), 1.5)
            gate.clear()  # no new requests while A is down; those open now die with it
            kills.append((sends.open, await unrecorded_sends(cluster, a)))
            await cluster.revive(a)
            gate.set()
        await asyncio.wait_for(sender, 90)
    finally:
        await reap(sender)
    unanswered = sorted(n for n, status in sends.status.items() if status is None)
    context += f"; kills at (requests open, unrecorded): {kills}; {sends.summary()}"
    context += f"; no answer: {unanswered}"
    assert len(kills) >= 3, cluster.report(f"{context}: too few kills while sending")
    assert any(open_ for open_, _ in kills), cluster.report(f"{context}: no request was open")
    assert len(sends.accepted) >= total // 2, cluster.report(f"{context}: too few accepted")
    assert set(sends.status.values()) <= {*ACCEPTED, None}, cluster.report(context)

    await check_sender_finished(a, cluster, context)
    sent = await a.scalar("SELECT count(*) FROM messages WHERE direction = 'outgoing'")
    await wait_settled(b, sent, cluster, f"{context}: B to hold the {sent} messages A sent")
    numbers = await check_receiver(http, b, cluster, context)
    lost = sorted(sends.accepted - set(numbers))
    assert not lost, cluster.report(f"{context}: answered 201/202 but never arrived: {lost[:20]}")
    outgoing = {
        row[0] for row in await a.query("SELECT id FROM messages WHERE direction = 'outgoing'")
    }
    incoming = {
        row[0] for row in await b.query("SELECT id FROM messages WHERE direction = 'incoming'")
    }
    assert outgoing == incoming, cluster.report(
        f"{context}: ids sent by A but not at B: {sorted(outgoing - incoming)[:5]};"
        f" at B but not sent by A: {sorted(incoming - outgoing)[:5]}"
    )
    assert set(sends.message_id.values()) <= incoming, cluster.report(
        f"{context}: answered ids missing at B"
    )
    print(context[:300])


# -- 4. recovery time ----------------------------------------------------------------------------


async def test_recovery_time_after_kill(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """Seconds from kill -9 + restart to ``/health`` 200, for the benchmark notes."""
    await cluster.start_backbone()
    started = time.monotonic()
    (a,) = await cluster.start_connectors("a")
    first_start = time.monotonic() - started
    sends = await send_all(cluster.http, a, a.address, range(200))
    assert sends.accepted == set(range(200)), cluster.report(sends.summary())

    recoveries = [await cluster.restart(a) for _ in range(3)]
    with capsys.disabled():
        print(
            f"\nrecovery after kill -9 (kill + restart -> /health 200): "
            f"{', '.join(f'{r:.2f}' for r in recoveries)} s "
            f"(first start with migrations: {first_start:.2f} s)"
        )
    assert max(recoveries) < 20, cluster.report(f"recovery too slow: {recoveries}")
