"""Push storage (issue 11): subscriptions and deliveries, on SQLite and PostgreSQL.

One delivery per (event, subscription); claims that never hand one delivery to two claimers,
that expire when unfinished, and that keep an ordered subscription in event order; config
subscriptions that are one row per (url, format). The migration itself is tested in
test_migrations.py.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from connector.ids import DELIVERY_ID, WEBHOOK_ID, new_event_id
from storage.engine import Sessions, create_engine, create_sessions
from storage.migrate import upgrade
from storage.models import Delivery, DeliveryAttempt, Event
from storage.repositories import deliveries as deliveries_repo
from storage.repositories import webhooks as webhooks_repo
from storage.repositories.deliveries import Attempt, Dead, Retry
from storage.repositories.webhooks import WebhookSpec

HOLD = timedelta(seconds=60)


async def _events(sessions: Sessions, count: int, now: datetime) -> list[int]:
    async with sessions.begin() as session:
        before = await session.scalar(select(func.coalesce(func.max(Event.seq), 0)))
        for _ in range(count):
            await session.execute(
                insert(Event).values(
                    id=new_event_id(),
                    type="message.received",
                    message_id=None,
                    created_at=now,
                    data={},
                )
            )
        seqs = await session.scalars(
            select(Event.seq).where(Event.seq > before).order_by(Event.seq)
        )
        return list(seqs)


async def _webhook(
    sessions: Sessions, now: datetime, *, ordered: bool = False, enabled: bool = True
) -> str:
    async with sessions.begin() as session:
        spec = WebhookSpec(url="https://receiver.example/hook", ordered=ordered, enabled=enabled)
        webhook = await webhooks_repo.insert(session, spec, secret_sealed=b"sealed", now=now)
        return webhook.id


async def _claim(sessions: Sessions, now: datetime, limit: int = 100) -> list[int]:
    async with sessions.begin() as session:
        return [d.seq for d in await deliveries_repo.claim_due(session, now, limit, HOLD)]


async def _delivery_seqs(sessions: Sessions, webhook_id: str) -> dict[int, int]:
    """Event seq -> delivery seq of ``webhook_id``'s deliveries."""
    async with sessions() as session:
        rows = await session.execute(
            select(Delivery.event_seq, Delivery.seq).where(Delivery.webhook_id == webhook_id)
        )
        return {event_seq: seq for event_seq, seq in rows}


async def test_one_delivery_per_event_and_subscription_even_when_added_twice(
    sessions: Sessions,
) -> None:
    now = datetime.now(UTC)
    events = await _events(sessions, 3, now)
    one, two = await _webhook(sessions, now), await _webhook(sessions, now)
    for _ in range(2):  # a retried transaction writes them again
        async with sessions.begin() as session:
            for event_seq in events:
                await deliveries_repo.add_for_event(session, event_seq, [one, two, one], now)
                await deliveries_repo.add_for_event(session, event_seq, [two], now)
    async with sessions() as session:
        rows = (await session.execute(select(Delivery))).scalars().all()
    pairs = Counter((d.event_seq, d.webhook_id) for d in rows)
    assert set(pairs) == {(e, w) for e in events for w in (one, two)}
    assert set(pairs.values()) == {1}
    assert all(DELIVERY_ID.match(d.id) and d.status == "pending" for d in rows)
    assert len({d.id for d in rows}) == len(rows)
    # and the database itself refuses a second row, whoever writes it
    with pytest.raises(IntegrityError):
        async with sessions.begin() as session:
            await session.execute(
                insert(Delivery).values(
                    id="DLV" + "x" * 17,
                    webhook_id=one,
                    event_seq=events[0],
                    status="pending",
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                    updated_at=now,
                )
            )


async def test_racing_claimers_never_get_the_same_delivery(
    database_url: str, sessions: Sessions
) -> None:
    now = datetime.now(UTC)
    events = await _events(sessions, 100, now)
    webhooks = [await _webhook(sessions, now) for _ in range(3)]
    async with sessions.begin() as session:
        for event_seq in events:
            await deliveries_repo.add_for_event(session, event_seq, webhooks, now)
    engines = [create_engine(database_url) for _ in range(4)]
    try:
        replicas = [create_sessions(engine) for engine in engines]

        async def claim_all(replica: Sessions) -> list[int]:
            taken: list[int] = []
            while claimed := await _claim(replica, now, 7):
                assert len(claimed) <= 7
                taken.extend(claimed)
                await asyncio.sleep(0)
            return taken

        async with asyncio.timeout(60):
            claims = await asyncio.gather(*(claim_all(replica) for replica in replicas))
    finally:
        for engine in engines:
            await engine.dispose()
    every = [seq for taken in claims for seq in taken]
    assert len(every) == len(set(every)) == 300, Counter(every).most_common(3)


async def test_postgres_claims_skip_what_an_open_claim_holds(postgres_url: str) -> None:
    """Two sessions claim at once: the second neither waits for the first nor takes its rows,
    and an ordered subscription's next delivery still waits for the one the first holds."""
    engines = [create_engine(postgres_url) for _ in range(2)]
    try:
        await upgrade(engines[0])
        first, second = (create_sessions(engine) for engine in engines)
        now = datetime.now(UTC)
        events = await _events(first, 5, now)
        plain, ordered = await _webhook(first, now), await _webhook(first, now, ordered=True)
        async with first.begin() as session:
            for event_seq in events:
                await deliveries_repo.add_for_event(session, event_seq, [plain, ordered], now)
        async with first.begin() as one:
            held = await deliveries_repo.claim_due(one, now, 3, HOLD)  # locked until commit
            # the limit holds (a pick run as a subquery once took every row it could lock)
            assert len(held) == 3
            assert {d.webhook_id for d in held} == {plain, ordered}
            async with asyncio.timeout(10), second.begin() as two:
                other = await deliveries_repo.claim_due(two, now, 100, HOLD)
        assert not {d.seq for d in held} & {d.seq for d in other}
        assert [d.webhook_id for d in other] == [plain] * 3
        assert await _claim(first, now) == []
    finally:
        for engine in engines:
            await engine.dispose()


async def test_two_outcome_records_for_one_subscription_do_not_deadlock(
    postgres_url: str,
) -> None:
    """Two replicas record outcomes for one subscription at once, as the delivery job does:
    count the attempt, settle the delivery (a second update of that row, whose foreign key
    PostgreSQL then checks again with a KEY SHARE lock on the subscription), then lock the
    subscription to move its health. The second waits for the first; neither is aborted as a
    deadlock (with FOR UPDATE, both did, every time)."""
    engines = [create_engine(postgres_url) for _ in range(2)]
    try:
        await upgrade(engines[0])
        first, second = (create_sessions(engine) for engine in engines)
        now = datetime.now(UTC)
        events = await _events(first, 2, now)
        webhook = await _webhook(first, now)
        async with first.begin() as session:
            for event_seq in events:
                await deliveries_repo.add_for_event(session, event_seq, [webhook], now)
        claimed = await _claim(first, now)
        assert len(claimed) == 2
        both_settled = asyncio.Barrier(2)

        async def record(sessions: Sessions, seq: int) -> None:
            async with sessions.begin() as session:
                attempt = Attempt(seq, now, duration_ms=5, status_code=200)
                await deliveries_repo.record_attempts(session, [attempt])
                await deliveries_repo.succeed(session, [seq], now)
                await both_settled.wait()  # each now holds KEY SHARE on the subscription
                locked = await webhooks_repo.lock_many(session, [webhook])
                locked[webhook].failure_streak = 0

        async with asyncio.timeout(20):
            await asyncio.gather(record(first, claimed[0]), record(second, claimed[1]))
        async with first.begin() as session:
            settled = await session.scalars(select(Delivery.status))
            assert list(settled) == ["succeeded", "succeeded"]
    finally:
        for engine in engines:
            await engine.dispose()


async def test_an_unfinished_claim_comes_back_after_hold(sessions: Sessions) -> None:
    now = datetime.now(UTC)
    events = await _events(sessions, 3, now)
    webhook = await _webhook(sessions, now)
    async with sessions.begin() as session:
        for event_seq in events:
            await deliveries_repo.add_for_event(session, event_seq, [webhook], now)
    by_event = await _delivery_seqs(sessions, webhook)
    done, retried, unfinished = (by_event[e] for e in events)
    assert sorted(await _claim(sessions, now)) == sorted([done, retried, unfinished])
    assert await _claim(sessions, now) == []  # claimed: hidden from everyone
    async with sessions.begin() as session:
        await deliveries_repo.record_attempts(
            session,
            [
                Attempt(done, now, 12, status_code=204),
                Attempt(retried, now, 15_000, error="timeout"),
            ],
        )
        await deliveries_repo.succeed(session, [done], now)
        await deliveries_repo.reschedule(
            session, [Retry(retried, "timeout", now + timedelta(hours=1))], now
        )
    assert await _claim(sessions, now + HOLD - timedelta(seconds=1)) == []
    # the claimer of `unfinished` "died": once its hold has passed, it is due again
    assert await _claim(sessions, now + HOLD + timedelta(seconds=1)) == [unfinished]
    async with sessions.begin() as session:
        await deliveries_repo.succeed(session, [unfinished], now)
    assert await _claim(sessions, now + timedelta(hours=1)) == [retried]
    async with sessions.begin() as session:
        await deliveries_repo.mark_dead(session, [Dead(retried, "retries spent")], now)
    assert await _claim(sessions, now + timedelta(days=30)) == []
    async with sessions() as session:
        rows = {d.seq: d for d in await deliveries_repo.list_for_webhook(session, webhook)}
    assert rows[done].status == "succeeded" and rows[done].attempts == 1
    assert rows[retried].status == "dead" and rows[retried].last_error == "retries spent"
    assert rows[unfinished].status == "succeeded" and rows[unfinished].attempts == 0
    assert all(row.claimed_until is None for row in rows.values())


async def test_an_ordered_subscription_hands_out_only_its_oldest_open_delivery(
    sessions: Sessions,
) -> None:
    now = datetime.now(UTC)
    events = await _events(sessions, 3, now)
    ordered, plain = await _webhook(sessions, now, ordered=True), await _webhook(sessions, now)
    async with sessions.begin() as session:
        for event_seq in reversed(events):  # delivery rows in the opposite order of events
            await deliveries_repo.add_for_event(session, event_seq, [ordered, plain], now)
    by_event = await _delivery_seqs(sessions, ordered)
    first, second, third = (by_event[e] for e in events)
    plain_seqs = set((await _delivery_seqs(sessions, plain)).values())
    claimed = set(await _claim(sessions, now))
    assert claimed & {first, second, third} == {first}
    assert claimed - {first} == plain_seqs  # an unordered subscription: all at once
    # first fails and waits for its retry: the others wait behind it, though due
    async with sessions.begin() as session:
        await deliveries_repo.succeed(session, list(plain_seqs), now)
        await deliveries_repo.reschedule(session, [Retry(first, "500", now + HOLD * 2)], now)
    assert await _claim(sessions, now + HOLD + timedelta(seconds=1)) == []
    later = now + HOLD * 2
    assert await _claim(sessions, later) == [first]
    async with sessions.begin() as session:
        await deliveries_repo.succeed(session, [first], later)
    assert await _claim(sessions, later) == [second]
    async with sessions.begin() as session:
        await deliveries_repo.mark_dead(session, [Dead(second, "400")], later)
    assert await _claim(sessions, later) == [third]


async def test_a_disabled_subscription_keeps_its_deliveries_but_is_not_handed_them(
    sessions: Sessions,
) -> None:
    now = datetime.now(UTC)
    (event,) = await _events(sessions, 1, now)
    webhook = await _webhook(sessions, now, enabled=False)
    async with sessions.begin() as session:
        await deliveries_repo.add_for_event(session, event, [webhook], now)
    assert await _claim(sessions, now) == []
    async with sessions.begin() as session:
        changed = await webhooks_repo.update(session, webhook, {"enabled": True}, now=now)
        assert changed is not None and changed.enabled
    assert await _claim(sessions, now) == list((await _delivery_seqs(sessions, webhook)).values())


async def test_config_upsert_keeps_one_row_per_url_and_format(
    database_url: str, sessions: Sessions
) -> None:
    now = datetime.now(UTC)
    url = "https://engine.example/engine-rest"
    spec = WebhookSpec(url=url, format="camunda7", events=["message.received"])
    async with sessions.begin() as session:
        made = await webhooks_repo.upsert_config(
            session, spec, secret_sealed=b"first", replace_secret=False, now=now
        )
        await webhooks_repo.update(session, made.id, {"failure_streak": 3}, now=now)
    assert WEBHOOK_ID.match(made.id) and made.source == "config"

    later = now + timedelta(minutes=1)
    changed = WebhookSpec(url=url, format="camunda7", events=["message.sent"], enabled=False)
    engines = [create_engine(database_url) for _ in range(3)]
    try:  # replicas starting at once with the same config

        async def mirror(replica: Sessions, secret: bytes) -> str:
            async with replica.begin() as session:
                webhook = await webhooks_repo.upsert_config(
                    session, changed, secret_sealed=secret, replace_secret=False, now=later
                )
                return webhook.id

        async with asyncio.timeout(60):
            ids = await asyncio.gather(
                *(
                    mirror(create_sessions(engine), b"replica-%d" % n)
                    for n, engine in enumerate(engines)
                )
            )
    finally:
        for engine in engines:
            await engine.dispose()
    assert set(ids) == {made.id}

    async with sessions.begin() as session:
        # another format is another subscription; an API one may repeat a url and format
        other = await webhooks_repo.upsert_config(
            session,
            WebhookSpec(url=url, format="standard"),
            secret_sealed=b"x",
            replace_secret=False,
            now=later,
        )
        api = await webhooks_repo.insert(session, spec, secret_sealed=b"api", now=later)
        replaced = await webhooks_repo.upsert_config(
            session, changed, secret_sealed=b"from-config", replace_secret=True, now=later
        )
    assert len({made.id, other.id, api.id}) == 3 and replaced.id == made.id
    async with sessions() as session:
        rows = {w.id: w for w in await webhooks_repo.list_all(session)}
        config = await webhooks_repo.list_all(session, source="config")
    assert len(rows) == 3 and {w.id for w in config} == {made.id, other.id}
    kept = rows[made.id]
    assert kept.events == ["message.sent"] and not kept.enabled  # config's fields replaced
    assert kept.secret_sealed == b"from-config"  # replaced only when asked
    assert kept.created_at == made.created_at and kept.updated_at == later
    assert kept.failure_streak == 3  # health is the delivery job's, config leaves it


async def test_pages_attempts_a_retry_by_hand_and_deleting_a_subscription(
    sessions: Sessions,
) -> None:
    now = datetime.now(UTC)
    events = await _events(sessions, 5, now)
    webhook, other = await _webhook(sessions, now), await _webhook(sessions, now)
    async with sessions.begin() as session:
        for event_seq in events:
            await deliveries_repo.add_for_event(session, event_seq, [webhook, other], now)
    by_event = await _delivery_seqs(sessions, webhook)
    seqs = [by_event[e] for e in events]
    claimed = await _claim(sessions, now)
    async with sessions.begin() as session:
        await deliveries_repo.record_attempts(
            session,
            [
                Attempt(seqs[0], now, 5, status_code=500, response_excerpt="x" * 20_000),
                Attempt(seqs[0], now, 7, status_code=410, error="gone"),
            ],
        )
        await deliveries_repo.mark_dead(session, [Dead(seqs[0], "gone")], now)
        await deliveries_repo.succeed(session, [s for s in claimed if s not in seqs[:2]], now)
        with pytest.raises(ValueError):
            await deliveries_repo.record_attempts(
                session, [Attempt(seqs[1], now, 1, response_excerpt="é" * 10_241)]
            )

    async with sessions() as session:
        pages: list[int] = []
        after: int | None = None
        while page := await deliveries_repo.list_for_webhook(session, webhook, None, 2, after):
            assert len(page) <= 2
            pages.extend(d.seq for d in page)
            after = page[-1].seq
        dead = await deliveries_repo.list_for_webhook(session, webhook, "dead")
        attempts = await deliveries_repo.attempts_of(session, seqs)
        found = await deliveries_repo.get(session, webhook, dead[0].id)
        elsewhere = await deliveries_repo.get(session, other, dead[0].id)
    assert pages == sorted(seqs)
    assert [d.seq for d in dead] == [seqs[0]] and dead[0].attempts == 2
    assert [a.status_code for a in attempts[seqs[0]]] == [500, 410] and set(attempts) == {seqs[0]}
    assert found is not None and found.seq == seqs[0] and elsewhere is None

    # a retry by hand: the dead one and a succeeded one open again; one in flight stays
    in_flight, succeeded = (
        await _delivery_id(sessions, seqs[1]),
        await _delivery_id(sessions, seqs[2]),
    )
    async with sessions.begin() as session:
        reset = await deliveries_repo.reset_for_retry(
            session, webhook, [dead[0].id, in_flight, succeeded], now
        )
    assert sorted(reset) == sorted([dead[0].id, succeeded])
    assert sorted(await _claim(sessions, now)) == sorted([seqs[0], seqs[2]])
    async with sessions() as session:
        row = await deliveries_repo.get(session, webhook, dead[0].id)
    assert row is not None and row.attempts == 0 and row.status == "pending"

    async with sessions.begin() as session:
        assert await webhooks_repo.delete(session, webhook)
        assert not await webhooks_repo.delete(session, webhook)
    async with sessions() as session:
        assert await webhooks_repo.get(session, webhook) is None
        left = await session.scalar(
            select(func.count()).select_from(Delivery).where(Delivery.webhook_id == webhook)
        )
        attempts_left = await session.scalar(select(func.count()).select_from(DeliveryAttempt))
        others = await session.scalar(
            select(func.count()).select_from(Delivery).where(Delivery.webhook_id == other)
        )
    assert (left, attempts_left, others) == (0, 0, 5)


async def _delivery_id(sessions: Sessions, seq: int) -> str:
    async with sessions() as session:
        return (await session.scalars(select(Delivery.id).where(Delivery.seq == seq))).one()


async def test_webhook_rows_round_trip(sessions: Sessions) -> None:
    now = datetime.now(UTC)
    spec = WebhookSpec(
        url="https://r.example/h",
        format="spiff",
        events=["message.received", "message.correlated"],
        filter={"name": "order", "correlationKey": "42"},
        headers={"X-Tenant": "a"},
        auth_sealed=b"auth",
        ordered=True,
        receipts=True,
    )
    async with sessions.begin() as session:
        made = await webhooks_repo.insert(session, spec, secret_sealed=b"s", now=now)
    async with sessions() as session:
        got = await webhooks_repo.get(session, made.id)
    assert got is not None
    assert (got.url, got.format, got.events, got.filter, got.headers) == (
        spec.url,
        spec.format,
        spec.events,
        spec.filter,
        spec.headers,
    )
    assert (got.auth_sealed, got.secret_sealed, got.ordered, got.receipts, got.source) == (
        b"auth",
        b"s",
        True,
        True,
        "api",
    )
    assert (got.breaker_state, got.failure_streak, got.last_success_at) == ("closed", 0, None)
    async with sessions.begin() as session:
        assert await webhooks_repo.update(session, "WHK" + "0" * 17, {}, now=now) is None
