"""Assemble a running connector: database, platform, identity, services and scheduler.

``open_runtime`` is the one place that knows how the parts fit; the HTTP app, the CLI and the
tests all start a connector through it, and it tears everything down in reverse order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from connector.correlation.sending import ReceiptSender
from connector.correlation.waiting import MessageWatch
from connector.crypto.at_rest import load_or_create_master_key
from connector.crypto.keys import IdentityKeys, sign_challenge
from connector.data_dir import data_dir_lock, prepare_data_dir
from connector.metrics import Metrics
from connector.platform.client import PlatformClient
from connector.platform.protocol import Platform
from connector.push.auth import AuthHeaders
from connector.push.brokers import PublisherUnavailable
from connector.push.delivery import BreakerPolicy, DeliveryLimits, DeliveryService
from connector.push.formats import FORMATS
from connector.push.routing import route_pending_events
from connector.push.subscriptions import NewSecret, Subscriptions
from connector.push.url_policy import UrlPolicy
from connector.retry import FixedSchedule, GrowingInterval
from connector.services import identity as identity_service
from connector.services.api_keys import ApiKeyService
from connector.services.events import EventFeed, EventNotifier, settle_for
from connector.services.files import FileService
from connector.services.housekeeping import Housekeeping
from connector.services.load import SendLoad
from connector.services.messages import MessageService
from connector.services.outbox import OutboxService
from connector.services.peers import PeerDirectory
from connector.services.sealing import Sealer
from connector.services.status import StatusService
from connector.services.sync import SyncService
from connector.services.transitions import StatusRecorder
from connector.settings import ConfigError, Settings, is_loopback
from connector.wakeups import Wakeups
from scheduler import JobScheduler
from scheduler.jobs import Job, Pace, connector_jobs
from scheduler.leases import instance_id
from storage.batching import WriteBatcher
from storage.engine import Sessions, create_engine, create_sessions
from storage.migrate import upgrade
from storage.models import Identity
from storage.repositories import messages as messages_repo
from storage.repositories import sync_state as sync_state_repo
from storage.signals import DELIVERIES, EVENTS, RECEIPTS

log = logging.getLogger(__name__)

MASTER_KEY_ENV = "CONNECTOR_MASTER_KEY"


@dataclass
class Runtime:
    settings: Settings
    sessions: Sessions
    platform: PlatformClient
    platform_url: str
    keys: IdentityKeys
    identity: Identity
    api_keys: ApiKeyService
    peers: PeerDirectory
    files: FileService
    messages: MessageService
    sync: SyncService
    outbox: OutboxService
    housekeeping: Housekeeping
    events: EventFeed
    scheduler: JobScheduler
    status: StatusService
    bootstrap_key: str | None
    subscriptions: Subscriptions
    delivery: DeliveryService
    watch: MessageWatch
    """Long-polls of the API: a correlate-mode send's receipt, messages still to come."""
    receipts: ReceiptSender
    new_webhook_secrets: list[NewSecret]
    """Secrets made at this start-up for [[webhooks]] entries without one: shown once."""
    metrics: Metrics
    """This connector's Prometheus registry and instruments (``GET /metrics``)."""

    @property
    def address(self) -> str:
        return self.keys.address


@asynccontextmanager
async def open_runtime(settings: Settings, *, run_scheduler: bool = True) -> AsyncIterator[Runtime]:
    """Start every part of a connector for ``settings``; stop them all on exit."""
    async with AsyncExitStack() as stack:
        prepare_data_dir(settings)
        stack.enter_context(data_dir_lock(settings.data_dir))
        _refuse_undelivered_formats(settings)
        master_key = load_or_create_master_key(settings.data_dir, os.environ.get(MASTER_KEY_ENV))

        engine = create_engine(settings.database_url)
        stack.push_async_callback(engine.dispose)
        await upgrade(engine)
        metrics = Metrics(engine.pool)
        wakeups = Wakeups(engine, metrics)  # after commits here, and on other replicas
        notifier = EventNotifier(signalled=lambda: wakeups.listening)  # wakes the long-polls
        stack.callback(notifier.close)
        wakeups.on(EVENTS, notifier.notify)
        # every write transaction routes the events it writes to the push subscriptions
        sessions = create_sessions(
            engine, after_commit=wakeups.after_commit, before_commit=route_pending_events
        )
        wakeups.start_listening()
        stack.push_async_callback(wakeups.stop)

        platform_url = settings.platform.url
        warn_if_plaintext(platform_url)
        if platform_url == "embedded":
            platform_url = await stack.enter_async_context(_embedded_backbone(settings))

        http = await stack.enter_async_context(
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=200),
                read_bufsize=1 << 20,
            )
        )
        platform = PlatformClient(
            platform_url,
            http,
            request_timeout=settings.platform.request_timeout,
            on_error=metrics.platform_error,
        )

        await messages_repo.start_local_sequence(sessions)
        async with sessions.begin() as session:
            await sync_state_repo.ensure(session)  # made once here, not raced by the sync jobs
        keys, identity = await identity_service.load_or_create(sessions, master_key)
        platform.set_identity(keys.address, lambda challenge: sign_challenge(keys, challenge))
        # Registered again on each start (idempotent at the platform): a platform that kept our
        # keys without their proof stores it then, so that peers can check our keys.
        await identity_service.ensure_registered(sessions, keys, platform, again=True)

        api_keys = ApiKeyService(sessions, master_key)
        await api_keys.sync_configured(settings.api.keys)
        bootstrap_key = await api_keys.bootstrap_key()

        url_policy = UrlPolicy(settings.delivery.allowed_hosts)
        subscriptions = Subscriptions(sessions, master_key, url_policy.check_resolved)
        new_webhook_secrets = await subscriptions.mirror_config(
            settings.webhooks, settings.publishers
        )
        push_http = await stack.enter_async_context(
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=settings.delivery.concurrency, resolver=url_policy.resolver()
                ),
                # the endpoint's own cookies never come back with the next request
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        )
        delivery = DeliveryService(
            sessions,
            push_http,
            subscriptions,
            schedule=FixedSchedule.from_settings(settings.delivery),
            correlation=GrowingInterval.from_settings(settings.delivery.correlation_retry),
            connector_url=settings.server.base_url,
            public_url_given=bool(settings.server.public_url),
            timeout=settings.delivery.timeout,
            breaker=BreakerPolicy(
                settings.delivery.breaker.failures,
                settings.delivery.breaker.first,
                settings.delivery.breaker.max,
            ),
            limits=DeliveryLimits(
                concurrency=settings.delivery.concurrency,
                per_endpoint=settings.delivery.per_endpoint,
            ),
            auth=AuthHeaders(url_policy=url_policy, timeout=settings.delivery.timeout),
            check_url=url_policy.check,
            wake=lambda: scheduler.wake("delivery"),
            metrics=metrics,
        )
        try:
            await delivery.prepare_publishers()
        except (PublisherUnavailable, ValueError) as exc:  # no library; a url or topic it refuses
            raise ConfigError(str(exc)) from None
        stack.push_async_callback(delivery.close)
        stack.push_async_callback(delivery.drain)  # after the scheduler stopped: see below

        scheduler = JobScheduler(sessions, instance=instance_id(settings.data_dir))
        wakeups.on(DELIVERIES, lambda: scheduler.wake("delivery"))
        wakeups.on(RECEIPTS, lambda: scheduler.wake("receipts"))
        services = build_services(
            settings,
            sessions,
            platform,
            keys=keys,
            master_key=master_key,
            wake_outbox=lambda: scheduler.wake("outbox"),
            metrics=metrics,
        )
        peers, files, messages = services.peers, services.files, services.messages
        sync, outbox = services.sync, services.outbox
        stack.push_async_callback(sync.drain)  # after the scheduler stopped, before disposal
        runtime = Runtime(
            settings=settings,
            sessions=sessions,
            platform=platform,
            platform_url=platform_url,
            keys=keys,
            identity=identity,
            api_keys=api_keys,
            peers=peers,
            files=files,
            messages=messages,
            sync=sync,
            outbox=outbox,
            housekeeping=Housekeeping(
                sessions,
                platform,
                file_retention=settings.files.retention,
                message_retention=settings.messages.retention,
            ),
            events=EventFeed(sessions, notifier, settle=settle_for(engine.dialect.name)),
            scheduler=scheduler,
            status=StatusService(sessions, platform, sync, scheduler),
            bootstrap_key=bootstrap_key,
            subscriptions=subscriptions,
            delivery=delivery,
            new_webhook_secrets=new_webhook_secrets,
            watch=MessageWatch(messages, notifier),
            receipts=ReceiptSender(sessions, platform, services.sealer),
            metrics=metrics,
        )
        if run_scheduler:
            scheduler.add_all(_jobs(runtime))
            scheduler.start()
            stack.push_async_callback(scheduler.stop)
        yield runtime


@dataclass(frozen=True)
class Services:
    """The services that send, receive and store, wired to one another."""

    peers: PeerDirectory
    files: FileService
    messages: MessageService
    outbox: OutboxService
    sync: SyncService
    sealer: Sealer


def build_services(
    settings: Settings,
    sessions: Sessions,
    platform: Platform,
    *,
    keys: IdentityKeys,
    master_key: bytes,
    wake_outbox: Callable[[], None],
    metrics: Metrics | None = None,
) -> Services:
    """The services for ``settings`` on ``sessions`` and ``platform``: the one wiring, used by
    :func:`open_runtime` and by the tests that run services on a platform double."""
    peers = PeerDirectory(sessions, platform)
    files = FileService(
        sessions,
        platform,
        master_key=master_key,
        address=keys.address,
        max_size=settings.files.max_size,
        chunk_size=settings.files.chunk_size,
    )
    sealer = Sealer(keys, peers, files)
    statuses = StatusRecorder(sessions)
    load = SendLoad()
    outbox = OutboxService(sessions, WriteBatcher(sessions), statuses, platform, sealer, load=load)
    messages = MessageService(
        sessions,
        statuses,
        platform,
        sealer,
        address=keys.address,
        default_time_to_live=settings.messages.default_time_to_live,
        request_timeout=settings.platform.request_timeout,
        wake_outbox=wake_outbox,
        load=load,
    )
    sync = SyncService(
        sessions,
        platform,
        peers,
        files=files,
        keys=keys,
        batch_size=settings.sync.batch_size,
        max_age=_freshness_window(settings),
        metrics=metrics,
    )
    return Services(peers, files, messages, outbox, sync, sealer)


def _refuse_undelivered_formats(settings: Settings) -> None:
    """Stop start-up for a [[webhooks]] format this version cannot deliver yet."""
    for index, webhook in enumerate(settings.webhooks):
        if webhook.format not in FORMATS:
            raise ConfigError(
                f"webhooks[{index}].format: {webhook.format!r} is not delivered by this "
                f"version; use one of {', '.join(FORMATS)}"
            )


def warn_if_plaintext(platform_url: str) -> bool:
    """Log a warning (and return True) for plain ``http://`` to a host beyond loopback.

    Envelopes are end-to-end encrypted either way, but the platform request signatures,
    addresses and traffic pattern then travel readable and unauthenticated on the network.
    """
    parts = urlsplit(platform_url)
    if parts.scheme != "http" or is_loopback(parts.hostname or ""):
        return False
    log.warning(
        "platform.url %s is plain http:// to a host beyond loopback: metadata travels "
        "unencrypted and the platform is not authenticated; use https://",
        platform_url,
    )
    return True


def _freshness_window(settings: Settings) -> float:
    """Replays are recognised only while we keep what they repeat: the shorter window wins."""
    retention = settings.messages.retention
    return min(settings.sync.max_age, retention) if retention else settings.sync.max_age


def _jobs(runtime: Runtime) -> list[Job]:
    """The job table (``scheduler.jobs``) with this connector's work and settings."""
    settings = runtime.settings

    async def sync_all() -> None:
        if await identity_service.ensure_registered(
            runtime.sessions, runtime.keys, runtime.platform
        ):
            await runtime.sync.pull_all()

    async def long_poll() -> Pace:
        counts, more = await runtime.sync.pull_page(wait=settings.sync.long_poll_wait)
        if counts.receipts and not counts.received and not counts.rejected and not more:
            if counts.correlations or runtime.watch.correlating:
                # correlate-mode sends are going on: each waits for its receipt, no rest
                return Pace.AGAIN
            return Pace.GATHER  # only delivery receipts, and few
        return Pace.AGAIN

    async def outbox() -> Pace:
        return Pace.AGAIN if await runtime.outbox.run_due() else Pace.IDLE

    async def delivery() -> Pace:
        return Pace.AGAIN if await runtime.delivery.run_due() else Pace.IDLE

    async def receipts() -> Pace:
        return Pace.AGAIN if await runtime.receipts.run_due() else Pace.IDLE

    return connector_jobs(
        sync=sync_all,
        long_poll=long_poll if settings.sync.long_poll else None,
        outbox=outbox,
        delivery=delivery,
        receipts=receipts,
        housekeeping=runtime.housekeeping.run,
        sync_interval=settings.sync.interval,
        housekeeping_interval=settings.housekeeping.interval,
    )


@asynccontextmanager
async def _embedded_backbone(settings: Settings) -> AsyncIterator[str]:
    """Run the reference platform in-process on a free loopback port."""
    from backbone.server import start_embedded

    runner, url = await start_embedded(settings.data_dir / "backbone")
    log.info("embedded backbone at %s", url)
    try:
        yield url
    finally:
        await runner.cleanup()
