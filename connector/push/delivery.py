"""The ``delivery`` job: claim due deliveries, send them, record how each went.

At least once, from the table: a delivery is claimed (storage.repositories.deliveries), sent,
and only then marked; a connector killed in between leaves its claim to expire and the
delivery is sent again, with the same ``webhook-id``. Everything about the next attempt is
data on the row (attempt count, next attempt time), decided here from each outcome:

- 2xx: ``succeeded``.
- 5xx, 408, 429, 3xx, no answer: ``failed`` and due again after the next step of
  ``delivery.retry_schedule`` (±20 %), or after what ``Retry-After`` asked on 429/503; once the
  schedule is used up, ``dead``.
- another 4xx: ``dead`` at once (the same request will be refused again).
- 410: ``dead``, and the subscription is disabled (``webhook.disabled``).

A final outcome (succeeded or dead) of a message the sender sent in correlate mode, at a
subscription with ``receipts`` on, owes the sender a correlation receipt: written in the same
transaction as the outcome (``connector.correlation.owed``).

Endpoints are protected from us, and we from them:

- At most ``concurrency`` requests are in flight in all, and ``per_endpoint`` per subscription.
- A circuit breaker per subscription: after ``breaker.failures`` failed attempts in a row it
  opens (``webhook.failing``); nothing goes to the endpoint while it is open, and the
  deliveries waiting for it keep their attempts. When the pause ends one delivery is sent as a
  probe (``half_open``); if it fails the pause doubles (up to ``breaker.max``), if it gets an
  answer the breaker closes (``webhook.recovered``) and every delivery that waited for the
  endpoint is due at once, so a backlog drains right after an outage rather than on each
  delivery's own schedule.
- A ``Retry-After`` on 429 or 503 pauses the whole subscription until then.

Sends run beside the loop: the job claims a batch, hands it to a task, and claims the next
while capacity is left, so one slow endpoint does not hold up the others. On stop,
:meth:`DeliveryService.drain` lets the batches in flight finish and record their outcomes.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession

from connector.clock import isoformat, utcnow
from connector.correlation.owed import Outcome, asked_for, owe
from connector.ids import new_event_id, new_message_id
from connector.logs import log_context
from connector.push import sender
from connector.push.auth import AuthHeaders, AuthUnavailable, OAuth2ClientCredentials, WebhookAuth
from connector.push.brokers import BrokerMessage, Publisher, create_publisher
from connector.push.formats import FORMATS, EngineOptions, Push
from connector.push.formats.standard import Standard
from connector.push.schemas import TestOutcome, TestResult
from connector.push.sender import AttemptResult, Delivered, Gone, NotCorrelated, Rejected, Retry
from connector.push.signing import SignedRequest, WebhookSecret
from connector.push.subscriptions import Subscriptions, is_publisher
from connector.retry import FixedSchedule, GrowingInterval, Uniform
from connector.services.body import MAX_RESULT_BYTES, compact_size
from connector.services.events import emit_other
from connector.services.lifecycle import EventType
from storage.engine import Sessions
from storage.models import Event, Webhook
from storage.repositories import deliveries as deliveries_repo
from storage.repositories import events as events_repo
from storage.repositories import webhooks as webhooks_repo
from storage.repositories.deliveries import CLAIM_HOLD, Attempt, Dead, DueDelivery
from storage.repositories.deliveries import Retry as RetryRow

if TYPE_CHECKING:
    from connector.metrics import Metrics

log = logging.getLogger(__name__)

__all__ = ["BreakerPolicy", "DeliveryLimits", "DeliveryService"]

TEST_EVENT_TYPE = "webhook.test"
_STANDARD = Standard()
_URL_CACHE = 10_000  # URLs whose spelling passed the policy, remembered
UrlGuard = Callable[[str], None]
"""Raises ValueError for a URL a request may not go to now (checked before each send)."""


@dataclass(frozen=True)
class BreakerPolicy:
    """``delivery.breaker``: when an endpoint counts as failing, and how long it rests."""

    failures: int = 5
    """Failed attempts in a row that open the breaker."""
    first: float = 5.0
    """Seconds of the first pause; each failed probe doubles it."""
    max: float = 30.0

    def pause(self, streak: int) -> float:
        """Seconds to rest with ``streak`` failures in a row, the breaker open: ``first`` when it
        opens (the streak is then ``failures``), doubled by each failed probe after."""
        probes_failed = max(0, streak - self.failures)
        return min(self.max, self.first * 2.0 ** min(probes_failed, 32))


@dataclass(frozen=True)
class DeliveryLimits:
    batch: int = 200
    """Deliveries claimed at once."""
    concurrency: int = 64
    """Requests in flight, in all."""
    per_endpoint: int = 8
    """Requests in flight to one subscription."""

    @property
    def held_per_endpoint(self) -> int:
        """Deliveries of one subscription claimed at a time (in flight or queued for it):
        enough to keep ``per_endpoint`` busy across claim and record transactions (4x held
        half the bench's throughput), few enough to go well within a claim (any still queued
        when its claim is about to end goes back unsent)."""
        return self.per_endpoint * 16


@dataclass(frozen=True)
class _Batch:
    deliveries: list[DueDelivery]
    events: dict[int, Event]
    hooks: dict[str, Webhook]
    full: bool
    """The claim took as many as it asked for: more may be due."""


@dataclass(frozen=True)
class _Sent:
    due: DueDelivery
    started_at: datetime
    result: AttemptResult | None
    """None: released unsent (the endpoint's breaker opened meanwhile)."""
    deadline: datetime | None = None
    """Engine formats: the message's expiresAt, when retries end."""


class DeliveryService:
    def __init__(
        self,
        sessions: Sessions,
        http: aiohttp.ClientSession,
        subscriptions: Subscriptions,
        *,
        schedule: FixedSchedule,
        correlation: GrowingInterval | None = None,
        connector_url: str = "",
        public_url_given: bool = False,
        timeout: float,
        breaker: BreakerPolicy = BreakerPolicy(),
        limits: DeliveryLimits = DeliveryLimits(),
        auth: AuthHeaders | None = None,
        check_url: UrlGuard | None = None,
        clock: Callable[[], datetime] = utcnow,
        rng: Uniform | None = None,
        wake: Callable[[], None] = lambda: None,
        metrics: Metrics | None = None,
    ) -> None:
        self._sessions = sessions
        self._metrics = metrics
        self._http = http
        self._subscriptions = subscriptions
        self._schedule = schedule
        self._correlation = correlation or GrowingInterval()
        self._connector_url = connector_url
        self._public_url_given = public_url_given
        self._timeout = timeout
        self._breaker = breaker
        self._limits = limits
        self._auth = auth or AuthHeaders()
        self._check_url = check_url
        self._clock = clock
        self._rng = rng or random.Random()
        self._wake = wake
        self._overall = asyncio.Semaphore(limits.concurrency)
        self._endpoints: dict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(limits.per_endpoint)
        )
        self._in_flight = 0
        self._held: dict[str, int] = defaultdict(int)  # subscription -> claimed, not recorded
        self._freed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._publishers: dict[str, Publisher] = {}
        self._allowed_urls: set[str] = set()

    def listening_at(self, url: str) -> None:
        """The API's address once its socket is bound (the links pushed to engines), unless
        ``server.public_url`` said it already."""
        if not self._public_url_given:
            self._connector_url = url.rstrip("/")

    # -- the job -----------------------------------------------------------------------------

    async def run_due(self) -> bool:
        """Claim what is due (as much as capacity allows) and start sending it; whether more
        may be due now (the claim was full). With no capacity left it waits until a batch in
        flight finishes."""
        free = self._limits.concurrency - self._in_flight
        if free <= 0:
            self._freed.clear()
            await self._freed.wait()
            return True
        claimed_at = self._clock()
        # a claim beyond what the subscriptions can take is given back at once: claim a
        # couple of subscriptions' worth at a time
        limit = min(self._limits.batch, free, 2 * self._limits.held_per_endpoint)
        batch = await self._claim(limit, claimed_at)
        if batch.deliveries:
            self._in_flight += len(batch.deliveries)
            for delivery in batch.deliveries:
                self._held[delivery.webhook_id] += 1
            until = claimed_at + CLAIM_HOLD
            task = asyncio.create_task(self._deliver(batch, until), name="delivery-batch")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # Not full: nothing else is due now. The loop rests until a commit that wrote
        # deliveries, a finished batch, or the idle interval wakes it, rather than claiming
        # again at once (an empty write transaction beside the batch just started).
        return batch.full

    async def drain(self, grace: float | None = None) -> None:
        """Let the batches in flight finish and record their outcomes (on stop), within
        ``grace`` seconds (default: one request's timeout and a little); then cancel what is
        left: its claims expire and those deliveries are sent again later."""
        grace = self._timeout + 5 if grace is None else grace
        if self._tasks:
            _, late = await asyncio.wait(list(self._tasks), timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _claim(self, limit: int, now: datetime) -> _Batch:
        """Claim due deliveries, and read their events and subscriptions in the same
        transaction (one transaction before the requests go, not two)."""
        cap = self._limits.held_per_endpoint
        busy = [webhook_id for webhook_id, held in self._held.items() if held >= cap]
        async with self._sessions.begin() as session:
            due = await deliveries_repo.claim_due(session, now, limit, skip=busy)
            if not due:
                return _Batch([], {}, {}, full=False)
            hooks = await webhooks_repo.lock_many(session, list({d.webhook_id for d in due}))
            keep: list[DueDelivery] = []
            released: list[int] = []
            probing: set[str] = set()
            taken: dict[str, int] = defaultdict(int)
            for delivery in due:
                webhook = hooks.get(delivery.webhook_id)
                if webhook is None:
                    continue
                if self._held[webhook.id] + taken[webhook.id] >= cap:
                    released.append(delivery.seq)  # enough of its deliveries in hand
                elif webhook.breaker_state == "closed":
                    taken[webhook.id] += 1
                    keep.append(delivery)
                elif webhook.id not in probing:
                    # the pause is over: one delivery probes; the rest wait for its outcome
                    probing.add(webhook.id)
                    webhook.breaker_state = "half_open"
                    webhook.breaker_until = now + CLAIM_HOLD
                    taken[webhook.id] += 1
                    keep.append(delivery)
                else:
                    released.append(delivery.seq)
            await deliveries_repo.release(session, released, now)
            events = await events_repo.by_seqs(session, [d.event_seq for d in keep])
        return _Batch(keep, events, hooks, full=len(due) >= limit)

    async def _deliver(self, batch: _Batch, claimed_until: datetime) -> None:
        claimed, events, hooks = batch.deliveries, batch.events, batch.hooks
        try:
            groups: dict[str, list[DueDelivery]] = defaultdict(list)
            for delivery in claimed:
                if delivery.webhook_id in hooks and delivery.event_seq in events:
                    groups[delivery.webhook_id].append(delivery)
                # else deleted meanwhile, with its deliveries (the foreign keys cascade)
            sent_groups = await asyncio.gather(
                *(
                    self._send_group(hooks[wid], items, events, claimed_until)
                    for wid, items in groups.items()
                )
            )
            await self._record([s for group in sent_groups for s in group], hooks, events)
        except Exception:
            # the claims expire and the deliveries come due again: nothing is lost
            log.exception("a delivery batch failed; its deliveries are retried after the claim")
        finally:
            self._in_flight -= len(claimed)
            for delivery in claimed:
                self._held[delivery.webhook_id] -= 1
                if not self._held[delivery.webhook_id]:
                    del self._held[delivery.webhook_id]
            self._freed.set()
            self._wake()  # the loop may be resting with this subscription's next ones due

    async def _send_group(
        self,
        webhook: Webhook,
        items: list[DueDelivery],
        events: dict[int, Event],
        claimed_until: datetime,
    ) -> list[_Sent]:
        if is_publisher(webhook):
            return await self._publish_group(webhook, items, events)
        secret = self._subscriptions.secret_of(webhook)
        auth = self._subscriptions.auth_of(webhook)
        endpoint = self._endpoints[webhook.id]
        failures, answered = 0, False

        async def one(delivery: DueDelivery) -> _Sent:
            nonlocal failures, answered
            async with self._overall, endpoint:
                started = self._clock()
                if failures >= self._breaker.failures and not answered:
                    return _Sent(delivery, started, None)  # failing: do not hammer it
                if started + timedelta(seconds=self._timeout) >= claimed_until:
                    # queued so long its claim could end mid-request: another claimer may
                    # take it then, so it goes back unsent rather than twice
                    return _Sent(delivery, started, None)
                event = events[delivery.event_seq]
                with log_context(delivery_id=delivery.id, message_id=event.message_id):
                    result = await self._push(
                        webhook, secret, auth, event, delivery.attempts + 1, delivery.round
                    )
            if isinstance(result, Retry):
                failures += 1
            else:
                answered = True
            deadline = None
            if webhook.format != "standard":
                deadline = _expires_at(events[delivery.event_seq])
            return _Sent(delivery, started, result, deadline)

        return list(await asyncio.gather(*(one(d) for d in items)))

    async def _publish_group(
        self, row: Webhook, items: list[DueDelivery], events: dict[int, Event]
    ) -> list[_Sent]:
        """Put a batch on a broker in one go; each confirmed one is delivered."""
        publisher = self._publisher(row)
        started = self._clock()
        if publisher is None:
            error = "the publisher's settings cannot be read"
            return [
                _Sent(d, started, Rejected(status=None, error=error, duration=0, response=""))
                for d in items
            ]
        messages = []
        for delivery in items:
            event = events[delivery.event_seq]
            target = _STANDARD.request(
                "",
                EngineOptions(),
                _push_of(event, delivery.attempts + 1, delivery.round, self._clock(), ""),
            )
            body = SignedRequest.of(event.id, target.payload).body
            messages.append(BrokerMessage(event.id, event.type, body))
        async with self._overall:
            outcomes = await publisher.publish(messages)
        duration = (self._clock() - started).total_seconds()
        sent = []
        for delivery, problem in zip(items, outcomes, strict=True):
            result: AttemptResult
            if problem is None:
                result = Delivered(status=None, error=None, duration=duration, response="")
            else:
                result = Retry(status=None, error=problem, duration=duration, response="")
            sent.append(_Sent(delivery, started, result))
        return sent

    def _publisher(self, row: Webhook) -> Publisher | None:
        publisher = self._publishers.get(row.id)
        if publisher is None:
            config = self._subscriptions.publisher_of(row)
            if config is None:
                return None
            publisher = create_publisher(config, timeout=self._timeout)
            self._publishers[row.id] = publisher
        return publisher

    async def prepare_publishers(self) -> None:
        """Make a publisher for each ``[[publishers]]`` entry now (no connection yet), so a
        missing client library stops start-up rather than the first delivery."""
        for row in await self._subscriptions.publisher_rows():
            self._publisher(row)

    async def publisher_health(self) -> dict[str, str]:
        """``ok`` or ``failing: why`` for each publisher in use (``/health``)."""
        return {row_id: await p.check() for row_id, p in self._publishers.items()}

    async def close(self) -> None:
        """Close the publishers' connections (after :meth:`drain`)."""
        for publisher in self._publishers.values():
            await publisher.close()
        self._publishers.clear()

    async def _push(
        self,
        webhook: Webhook,
        secret: WebhookSecret,
        auth: WebhookAuth | None,
        event: Event,
        attempt: int,
        round: int = 0,
    ) -> AttemptResult:
        """Attempt number ``attempt`` of ``event`` in the subscription's format."""
        format_ = FORMATS[webhook.format]
        push = _push_of(event, attempt, round, self._clock(), self._connector_url)
        try:
            target = format_.request(webhook.url, EngineOptions.of(webhook.options), push)
            request = SignedRequest.of(event.id, target.payload)
        except ValueError as exc:
            error = f"cannot be sent as {webhook.format}: {exc}"
            return Rejected(status=None, error=error, duration=0, response="")
        result = await self.attempt(webhook, secret, auth, request, url=target.url)
        return format_.classify(result, push)

    async def attempt(
        self,
        webhook: Webhook,
        secret: WebhookSecret,
        auth: WebhookAuth | None,
        request: SignedRequest,
        *,
        url: str | None = None,
    ) -> AttemptResult:
        """One request of ``request`` to ``url`` (default: the subscription's), with the
        subscription's headers and auth."""
        url = url or webhook.url
        if self._check_url is not None and url not in self._allowed_urls:
            try:
                self._check_url(url)
            except ValueError as exc:
                return Rejected(status=None, error=f"URL refused: {exc}", duration=0, response="")
            # the check reads the spelling only (names are checked at each resolution): once
            # per URL is enough
            if len(self._allowed_urls) < _URL_CACHE:
                self._allowed_urls.add(url)
        headers: dict[str, str] = dict(webhook.headers)
        try:
            authorization = await self._auth.headers(auth, self._http)
        except AuthUnavailable as exc:
            return Retry(status=None, error=f"auth: {exc}", duration=0, response="")
        headers.update(authorization)
        result = await sender.send(
            self._http,
            url,
            request,
            secret,
            extra_headers=headers,
            request_timeout=self._timeout,
            clock=self._clock,
        )
        if result.status == 401 and isinstance(auth, OAuth2ClientCredentials):
            # most likely a token revoked or expired early: the next attempt fetches another
            self._auth.invalidate(auth, authorization)
            return Retry(
                status=401, error=result.error, duration=result.duration, response=result.response
            )
        return result

    async def _record(
        self, sent: Sequence[_Sent], hooks: dict[str, Webhook], events: dict[int, Event]
    ) -> None:
        now = self._clock()
        told: list[Outcome] = []  # final outcomes that owe the sender a correlation receipt
        attempts: list[Attempt] = []
        succeeded: list[int] = []
        retries: list[RetryRow] = []
        dead: list[Dead] = []
        released: list[int] = []
        by_webhook: dict[str, list[AttemptResult]] = defaultdict(list)
        for item in sent:
            result = item.result
            if result is None:
                released.append(item.due.seq)
                continue
            by_webhook[item.due.webhook_id].append(result)
            if self._metrics is not None:
                self._metrics.delivery_attempt(item.due.webhook_id, _ATTEMPTS[type(result)])
            attempts.append(
                Attempt(
                    delivery_seq=item.due.seq,
                    started_at=item.started_at,
                    duration_ms=round(result.duration * 1000),
                    status_code=result.status,
                    error=result.error,
                    response_excerpt=_excerpt(result.response),
                )
            )
            webhook, event = hooks.get(item.due.webhook_id), events.get(item.due.event_seq)
            owes = webhook is not None and event is not None and _owes_receipt(webhook, event)
            if isinstance(result, Delivered):
                _log_outcome(item, event, "delivered")
                succeeded.append(item.due.seq)
                if owes:
                    assert webhook is not None and event is not None
                    push = _push_of(
                        event, item.due.attempts + 1, item.due.round, now, self._connector_url
                    )
                    answer = FORMATS[webhook.format].result(result, push)
                    told.append(Outcome(event, "correlated", _bounded(answer), None))
                continue
            delay, why = self._next_try(item, result, now)
            if delay is None:
                _log_outcome(item, event, "dead")
                dead.append(Dead(item.due.seq, why))
                if owes:
                    assert event is not None
                    reason = _refusal(result, expired=item.deadline is not None)
                    told.append(Outcome(event, "rejected", None, reason))
            else:
                _log_outcome(item, event, f"tried again in {delay:.0f} s")
                at = now + timedelta(seconds=delay)
                next_round = isinstance(result, NotCorrelated)
                retries.append(RetryRow(item.due.seq, result.error, at, next_round))
        async with self._sessions.begin() as session:
            await deliveries_repo.record_attempts(session, attempts)
            await deliveries_repo.succeed(session, succeeded, now)
            await deliveries_repo.reschedule(session, retries, now)
            await deliveries_repo.mark_dead(session, dead, now)
            await deliveries_repo.release(session, released, now)
            await owe(session, told, now)
            locked = await webhooks_repo.lock_many(session, list(by_webhook))
            recovered = [
                webhook_id
                for webhook_id, results in by_webhook.items()
                if webhook_id in locked and self._health(session, locked[webhook_id], results, now)
            ]
        # What waited for a recovered endpoint is due now. Not in the transaction above: it
        # holds subscription rows locked, and a claim holding delivery rows may be waiting for
        # one of those (a deadlock on PostgreSQL).
        for webhook_id in recovered:
            async with self._sessions.begin() as session:
                await deliveries_repo.due_now(session, webhook_id, now)

    def _next_try(
        self, item: _Sent, result: AttemptResult, now: datetime
    ) -> tuple[float | None, str | None]:
        """Seconds until the next attempt after a failed one, or None and why it is dead.

        Engines are asked until the message expires: "not correlated yet" on the correlation
        policy, other transient failures on the retry schedule (its last step repeating). A
        plain webhook follows the retry schedule and then is dead.
        """
        attempt = item.due.attempts + 1
        if isinstance(result, Rejected | Gone):
            return None, result.error
        deadline = item.deadline
        if isinstance(result, NotCorrelated):
            if deadline is None:
                return None, f"not correlated, and the message has no expiresAt: {result.error}"
            delay = self._correlation.delay(attempt, now=now, deadline=deadline)
            if delay is None:
                return None, f"not correlated before the message expired; last: {result.error}"
            return delay, None
        assert isinstance(result, Retry)
        if deadline is not None:
            if now >= deadline:
                return None, f"the message expired; last: {result.error}"
            steps = len(self._schedule.delays)
            delay = self._schedule.delay(min(attempt, steps), self._rng)
        else:
            delay = self._schedule.delay(attempt, self._rng)
            if delay is None:
                return None, f"retries used up; last: {result.error}"
        assert delay is not None
        if result.retry_after is not None:
            delay = result.retry_after
        if deadline is not None:
            delay = min(delay, max((deadline - now).total_seconds(), 0.0))
        return delay, None

    def _health(
        self, session: AsyncSession, webhook: Webhook, results: list[AttemptResult], now: datetime
    ) -> bool:
        """Move the subscription's health and breaker on this batch's outcomes; whether the
        endpoint recovered (its breaker closed)."""
        recovered = False
        failed = sum(isinstance(r, Retry) for r in results)
        answered = len(results) - failed
        if any(isinstance(r, Delivered) for r in results):
            webhook.last_success_at = now
        was = webhook.breaker_state
        if answered:
            webhook.failure_streak = 0
            if was != "closed":
                webhook.breaker_state, webhook.breaker_until = "closed", None
                recovered = True
                emit_other(session, EventType.WEBHOOK_RECOVERED, _about(webhook))
                log.info("webhook %s answers again: breaker closed", webhook.id)
        elif failed:
            threshold = self._breaker.failures
            if was == "closed":
                webhook.failure_streak += failed
                if webhook.failure_streak >= threshold:
                    # A burst of failures opens the breaker once: the first pause is `first`,
                    # however many requests of the batch failed together.
                    webhook.failure_streak = threshold
            else:
                webhook.failure_streak += 1  # a failed probe: each doubles the pause
            if webhook.failure_streak >= threshold:
                pause = self._breaker.pause(webhook.failure_streak)
                webhook.breaker_state = "open"
                webhook.breaker_until = now + timedelta(seconds=pause)
                if was == "closed":
                    emit_other(session, EventType.WEBHOOK_FAILING, _about(webhook, results[-1]))
                    log.warning(
                        "webhook %s keeps failing (%d in a row): paused %g s",
                        webhook.id,
                        webhook.failure_streak,
                        pause,
                    )
        waits = [r.retry_after for r in results if isinstance(r, Retry) and r.retry_after]
        if waits:
            until = now + timedelta(seconds=max(waits))
            if webhook.breaker_until is None or webhook.breaker_until < until:
                webhook.breaker_until = until
        if any(isinstance(r, Gone) for r in results) and webhook.enabled:
            webhook.enabled = False
            emit_other(session, EventType.WEBHOOK_DISABLED, _about(webhook, results[-1]))
            log.warning("webhook %s answered 410 Gone: disabled", webhook.id)
        return recovered

    # -- a test request ----------------------------------------------------------------------

    async def test(self, webhook_id: str) -> TestResult:
        """Send a signed example event to the subscription now, in its format; nothing is
        stored. Plain webhooks get a ``webhook.test`` event; engines a ``message.received``
        of an example message named ``connector.test`` (which no process waits for, so an
        engine's "not correlated" answer shows that it was reached and understood)."""
        webhook = await self._subscriptions.webhook(webhook_id)
        now = self._clock()
        event = Event(id=new_event_id(), created_at=now, message_id=None)
        if webhook.format == "standard":
            event.type = TEST_EVENT_TYPE
            event.data = {"webhookId": webhook.id, "text": "a test event from the connector"}
        else:
            event.type = EventType.RECEIVED
            event.data = _example_message(now)
        result = await self._push(
            webhook,
            self._subscriptions.secret_of(webhook),
            self._subscriptions.auth_of(webhook),
            event,
            1,
        )
        return TestResult(
            delivered=isinstance(result, Delivered),
            outcome=_OUTCOMES[type(result)],
            status_code=result.status,
            error=result.error,
            duration_ms=round(result.duration * 1000),
            response=result.response,
        )


_OUTCOMES: dict[type[AttemptResult], TestOutcome] = {
    Delivered: "delivered",
    NotCorrelated: "not_correlated",
    Retry: "failed",
    Rejected: "rejected",
    Gone: "gone",
}


_ATTEMPTS: dict[type[AttemptResult], str] = {
    Delivered: "delivered",
    NotCorrelated: "not_correlated",
    Retry: "retry",
    Rejected: "rejected",
    Gone: "gone",
}
"""An attempt's outcome as ``connector_webhook_delivery_attempts_total`` counts it."""


def _log_outcome(item: _Sent, event: Event | None, outcome: str) -> None:
    """One line per attempt, with ids and the HTTP status only: the error and the answer may
    quote the endpoint's URL or body, and are kept with the attempt (the API shows them)."""
    assert item.result is not None
    status = item.result.status
    log.log(
        logging.WARNING if outcome == "dead" else logging.INFO,
        "delivery to %s, attempt %d: %s%s",
        item.due.webhook_id,
        item.due.attempts + 1,
        outcome,
        f" (HTTP {status})" if status is not None else "",
        extra={
            "delivery_id": item.due.id,
            "webhook_id": item.due.webhook_id,
            **({"message_id": event.message_id} if event and event.message_id else {}),
            **({"http_status": status} if status is not None else {}),
        },
    )


def _example_message(now: datetime) -> dict[str, Any]:
    stamp = isoformat(now)
    return {
        "id": new_message_id(),
        "direction": "incoming",
        "sender": "id1aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "recipients": [],
        "name": "connector.test",
        "correlationKey": "connector-test",
        "content": {"test": True},
        "attachments": [],
        "status": "received",
        "createdAt": stamp,
        "receivedAt": stamp,
        "expiresAt": isoformat(now + timedelta(minutes=5)),
    }


def _push_of(event: Event, attempt: int, round: int, now: datetime, connector_url: str) -> Push:
    """Attempt number ``attempt`` of ``event`` in round ``round``, as a format sees it."""
    return Push(
        event_id=event.id,
        event_type=event.type,
        created_at=event.created_at,
        data=event.data,
        attempt=attempt,
        now=now,
        connector_url=connector_url,
        round=round,
    )


def _expires_at(event: Event) -> datetime | None:
    value = event.data.get("expiresAt") if isinstance(event.data, dict) else None
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _about(webhook: Webhook, last: AttemptResult | None = None) -> dict[str, Any]:
    return {
        "id": webhook.id,
        "url": webhook.url,
        "enabled": webhook.enabled,
        "failureStreak": webhook.failure_streak,
        "breaker": webhook.breaker_state,
        "pausedUntil": None if webhook.breaker_until is None else isoformat(webhook.breaker_until),
        "lastError": None if last is None else last.error,
    }


def _owes_receipt(webhook: Webhook, event: Event) -> bool:
    """Whether a final outcome of ``event`` at ``webhook`` is told to the message's sender."""
    return webhook.receipts and not is_publisher(webhook) and asked_for(event)


def _bounded(answer: Any) -> Any:
    """The push target's answer (as its format reads it) for the receipt; None when it is too
    much to send (over MAX_RESULT_BYTES as compact JSON: the receiver would refuse it)."""
    if answer is None:
        return None
    return answer if compact_size(answer) <= MAX_RESULT_BYTES else None


def _refusal(result: AttemptResult, *, expired: bool) -> str:
    """Why the push target did not take it, for the sender: the kind and the HTTP status,
    never the target's own words or addresses (they describe the receiver's inside)."""
    status = "" if result.status is None else f" (HTTP {result.status})"
    if isinstance(result, NotCorrelated):
        return "nothing at the receiver took the message before it expired" + status
    if isinstance(result, Gone):
        return "the receiver's push target is gone" + status
    if isinstance(result, Rejected):
        if result.status is None:
            return "the receiver cannot pass the message to its push target"
        return "the receiver's push target refused the message" + status
    if expired:  # an engine format: asked until the message's expiresAt
        return "the receiver's push target did not take the message before it expired" + status
    return "the receiver's push target did not take the message; retries used up" + status


def _excerpt(text: str) -> str | None:
    if not text:
        return None
    raw = text.encode()
    if len(raw) <= deliveries_repo.RESPONSE_EXCERPT_LIMIT:
        return text
    return raw[: deliveries_repo.RESPONSE_EXCERPT_LIMIT].decode(errors="ignore")
