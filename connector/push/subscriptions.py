"""Push subscriptions: made by the API or mirrored from ``[[webhooks]]``; their deliveries.

The rules live here; SQL lives in ``storage.repositories.webhooks`` and ``...deliveries``.

- A signing secret is made for each subscription (or taken from the request or config), sealed
  with the master key, and shown once: in the answer to the POST that made it, or, for a config
  subscription without ``secret``, on the console at the start-up that made it.
- ``auth`` is sealed too and only its type is ever shown again.
- Config subscriptions belong to the config file: the API reads them, retries and replays their
  deliveries, but changes and deletes them only there (409 ``webhook_from_config``). At start-up
  the config rows become exactly the file's entries; one that left the file is removed with its
  deliveries.
- URLs are checked by the :class:`~connector.push.url_policy.UrlPolicy` (422
  ``webhook_url_refused``), also after resolving the host.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

from pydantic import TypeAdapter
from sqlalchemy.ext.asyncio import AsyncSession

from connector.clock import utcnow
from connector.crypto.at_rest import open_secret, seal_secret
from connector.errors import (
    DeliveryInFlight,
    NotFound,
    ValidationFailed,
    WebhookFromConfig,
    WebhookUrlRefused,
)
from connector.push.auth import WebhookAuth
from connector.push.formats import FORMATS
from connector.push.routing import Route
from connector.push.schemas import (
    AttemptOut,
    AuthOut,
    DeliveryOut,
    PublisherOut,
    WebhookFilter,
    WebhookHealth,
    WebhookIn,
    WebhookOut,
    WebhookPatch,
)
from connector.push.signing import WebhookSecret, new_secret, parse_secret
from connector.settings import ConfigError, PublisherConfig, WebhookConfig
from storage.engine import Sessions
from storage.models import Delivery, DeliveryAttempt, Event, Webhook
from storage.repositories import deliveries as deliveries_repo
from storage.repositories import events as events_repo
from storage.repositories import webhooks as webhooks_repo
from storage.repositories.webhooks import WebhookChanges, WebhookSpec

log = logging.getLogger(__name__)

__all__ = ["NewSecret", "Subscriptions"]

_SECRET_PURPOSE = "webhook-secret"
_AUTH_PURPOSE = "webhook-auth"
_PUBLISHER_PURPOSE = "publisher-config"  # the whole entry: its url may hold a password
_AUTH = TypeAdapter[WebhookAuth](WebhookAuth)
_REPLAY_PAGE = 500

UrlCheck = Callable[[str], Awaitable[None]]
"""Raises ValueError (with the reason) for a URL push requests may not go to."""


@dataclass(frozen=True)
class NewSecret:
    """A config subscription made at this start-up, with the secret the connector made."""

    url: str
    secret: str


@dataclass(frozen=True)
class DeliveryPageData:
    items: list[DeliveryOut]
    last_seq: int | None
    """The seq of the last item when the page is full (there may be more)."""


class Subscriptions:
    """Subscriptions and the operations on their deliveries."""

    def __init__(self, sessions: Sessions, master_key: bytes, check_url: UrlCheck) -> None:
        self._sessions = sessions
        self._master_key = master_key
        self._check_url = check_url

    # -- secrets -----------------------------------------------------------------------------

    def secret_of(self, webhook: Webhook) -> WebhookSecret:
        sealed = open_secret(self._master_key, webhook.secret_sealed, _SECRET_PURPOSE)
        return parse_secret(sealed.decode())

    def publisher_of(self, webhook: Webhook) -> PublisherConfig | None:
        """The ``[[publishers]]`` entry behind a broker subscription (None for a webhook)."""
        if not is_publisher(webhook) or webhook.auth_sealed is None:
            return None
        raw = open_secret(self._master_key, webhook.auth_sealed, _PUBLISHER_PURPOSE)
        return PublisherConfig.model_validate_json(raw)

    def auth_of(self, webhook: Webhook) -> WebhookAuth | None:
        if webhook.auth_sealed is None or is_publisher(webhook):
            return None
        raw = open_secret(self._master_key, webhook.auth_sealed, _AUTH_PURPOSE)
        return _AUTH.validate_json(raw)

    def _seal_secret(self, secret: str) -> bytes:
        return seal_secret(self._master_key, secret.encode(), _SECRET_PURPOSE)

    def _seal_auth(self, auth: WebhookAuth | None) -> bytes | None:
        if auth is None:
            return None
        raw = auth.model_dump_json(by_alias=True).encode()
        return seal_secret(self._master_key, raw, _AUTH_PURPOSE)

    async def _checked(self, url: str) -> str:
        try:
            await self._check_url(url)
        except ValueError as exc:
            raise WebhookUrlRefused(
                f"url: {exc}", errors=[{"field": "url", "message": str(exc)}]
            ) from None
        return url

    # -- the API's CRUD ----------------------------------------------------------------------

    async def create(self, request: WebhookIn) -> tuple[WebhookOut, str]:
        """A new API subscription and its secret (shown once)."""
        if request.format not in FORMATS:
            message = f"not delivered by this version; use one of {', '.join(FORMATS)}"
            raise ValidationFailed(
                f"format: {message}",
                status=422,
                errors=[{"field": "format", "message": message}],
            )
        await self._checked(request.url)
        secret = request.secret or str(new_secret())
        spec = WebhookSpec(
            url=request.url,
            format=request.format,
            events=[str(e) for e in request.events],
            filter=request.filter.model_dump(by_alias=True, exclude_none=True),
            headers=dict(request.headers),
            options=_options(request.correlate_by, request.tenant_id, request.process_group),
            auth_sealed=self._seal_auth(request.auth),
            enabled=request.enabled,
            ordered=request.ordered,
            receipts=request.receipts,
        )
        async with self._sessions.begin() as session:
            webhook = await webhooks_repo.insert(
                session, spec, secret_sealed=self._seal_secret(secret), now=utcnow()
            )
            view = await self._view(session, webhook)
        return view, secret

    async def page(self, limit: int, offset: int) -> tuple[list[WebhookOut], bool]:
        """A page of webhooks, oldest first, and whether more follow."""
        async with self._sessions() as session:
            everyone = [w for w in await webhooks_repo.list_all(session) if not is_publisher(w)]
            page = everyone[offset : offset + limit]
            views = [await self._view(session, webhook) for webhook in page]
        return views, offset + limit < len(everyone)

    async def get(self, webhook_id: str) -> WebhookOut:
        async with self._sessions() as session:
            return await self._view(session, await _existing(session, webhook_id))

    async def update(self, webhook_id: str, patch: WebhookPatch) -> WebhookOut:
        given = patch.model_fields_set
        changes: WebhookChanges = {}
        if patch.url is not None:
            changes["url"] = await self._checked(patch.url)
        if patch.events is not None:
            changes["events"] = [str(e) for e in patch.events]
        if patch.filter is not None:
            changes["filter"] = patch.filter.model_dump(by_alias=True, exclude_none=True)
        if patch.headers is not None:
            changes["headers"] = dict(patch.headers)
        if "auth" in given:
            changes["auth_sealed"] = self._seal_auth(patch.auth)
        engine_fields = {"correlate_by", "tenant_id", "process_group"} & given
        for flag in ("enabled", "ordered", "receipts"):
            value = getattr(patch, flag)
            if value is not None:
                changes[flag] = value
        async with self._sessions.begin() as session:
            webhook = await _existing(session, webhook_id)
            if webhook.source == "config":
                raise WebhookFromConfig()
            if engine_fields:
                now_options = {**webhook.options}
                for name in engine_fields:
                    now_options[name] = getattr(patch, name)
                changes["options"] = _options(
                    now_options.get("correlate_by") or "businessKey",
                    now_options.get("tenant_id"),
                    now_options.get("process_group"),
                )
            if changes.get("enabled") is True and not webhook.enabled:
                # enabled again by hand: a fresh start, not the old breaker's pause
                changes["failure_streak"] = 0
                changes["breaker_state"] = "closed"
                changes["breaker_until"] = None
            updated = await webhooks_repo.update(session, webhook_id, changes, now=utcnow())
            assert updated is not None
            return await self._view(session, updated)

    async def delete(self, webhook_id: str) -> None:
        async with self._sessions.begin() as session:
            webhook = await _existing(session, webhook_id)
            if webhook.source == "config":
                raise WebhookFromConfig()
            await webhooks_repo.delete(session, webhook_id)

    async def webhook(self, webhook_id: str) -> Webhook:
        """The stored subscription (for a test request); 404 when there is none."""
        async with self._sessions() as session:
            return await _existing(session, webhook_id)

    # -- config ------------------------------------------------------------------------------

    async def mirror_config(
        self,
        configured: Sequence[WebhookConfig],
        publishers: Sequence[PublisherConfig] = (),
    ) -> list[NewSecret]:
        """Make the config subscriptions exactly the ``[[webhooks]]`` and ``[[publishers]]``
        entries; the secrets made for webhook entries without one that are new (to be shown
        once)."""
        for index, entry in enumerate(configured):
            try:
                await self._check_url(entry.url)
            except ValueError as exc:
                raise ConfigError(f"webhooks[{index}].url: {exc}") from None
        made: list[NewSecret] = []
        now = utcnow()
        async with self._sessions.begin() as session:
            keep: list[str] = []
            for entry in configured:
                secret = entry.secret or str(new_secret())
                spec = WebhookSpec(
                    url=entry.url,
                    format=entry.format,
                    events=list(entry.events),
                    filter=dict(entry.filter),
                    headers=dict(entry.headers),
                    options=_options(entry.correlate_by, entry.tenant_id, entry.process_group),
                    auth_sealed=self._seal_auth(entry.auth),
                    enabled=entry.enabled,
                    ordered=entry.ordered,
                    receipts=entry.receipts,
                )
                webhook = await webhooks_repo.upsert_config(
                    session,
                    spec,
                    secret_sealed=self._seal_secret(secret),
                    replace_secret=entry.secret is not None,
                    now=now,
                )
                keep.append(webhook.id)
                if entry.secret is None and webhook.created_at == now:
                    made.append(NewSecret(entry.url, secret))
            for publisher in publishers:
                spec = WebhookSpec(
                    url=publisher_key(publisher),
                    format="standard",  # brokers get the standard body
                    events=list(publisher.events),
                    filter=dict(publisher.filter),
                    options={"broker": publisher.kind, "topic": publisher.topic},
                    auth_sealed=seal_secret(
                        self._master_key, publisher.model_dump_json().encode(), _PUBLISHER_PURPOSE
                    ),
                )
                webhook = await webhooks_repo.upsert_config(
                    session,
                    spec,
                    secret_sealed=self._seal_secret(str(new_secret())),
                    replace_secret=False,
                    now=now,
                )
                keep.append(webhook.id)
            for url in await webhooks_repo.delete_config_except(session, keep):
                log.info("webhook %s is no longer in the config: removed", url)
        return made

    async def publishers(self, limit: int, offset: int) -> tuple[list[PublisherOut], bool]:
        """A page of publishers (``[[publishers]]``), oldest first, and whether more follow."""
        async with self._sessions() as session:
            everyone = [w for w in await webhooks_repo.list_all(session) if is_publisher(w)]
            page = everyone[offset : offset + limit]
            views = [await self._publisher_view(session, row) for row in page]
        return views, offset + limit < len(everyone)

    async def publisher_rows(self) -> list[Webhook]:
        async with self._sessions() as session:
            return [w for w in await webhooks_repo.list_all(session) if is_publisher(w)]

    async def publisher(self, publisher_id: str) -> PublisherOut:
        async with self._sessions() as session:
            row = await _existing(session, publisher_id, publisher=True)
            return await self._publisher_view(session, row)

    # -- deliveries (of webhooks, or with ``publisher``, of publishers) -----------------------

    async def deliveries(
        self,
        webhook_id: str,
        status: str | None,
        limit: int,
        after: int | None,
        *,
        publisher: bool = False,
    ) -> DeliveryPageData:
        async with self._sessions() as session:
            await _existing(session, webhook_id, publisher=publisher)
            rows = await deliveries_repo.list_for_webhook(session, webhook_id, status, limit, after)
            items = await _delivery_views(session, rows)
        return DeliveryPageData(items, rows[-1].seq if len(rows) == limit else None)

    async def retry(
        self, webhook_id: str, delivery_id: str, *, publisher: bool = False
    ) -> DeliveryOut:
        """Open one delivery again, due now; 409 while an attempt of it is in flight."""
        async with self._sessions.begin() as session:
            await _existing(session, webhook_id, publisher=publisher)
            if await deliveries_repo.get(session, webhook_id, delivery_id) is None:
                raise NotFound(f"webhook {webhook_id} has no delivery {delivery_id}")
            reset = await deliveries_repo.reset_for_retry(
                session, webhook_id, [delivery_id], utcnow()
            )
            if not reset:
                raise DeliveryInFlight()
            delivery = await deliveries_repo.get(session, webhook_id, delivery_id)
            assert delivery is not None
            await session.refresh(delivery)
            return (await _delivery_views(session, [delivery]))[0]

    async def replay(
        self,
        webhook_id: str,
        since: datetime,
        until: datetime | None,
        *,
        publisher: bool = False,
    ) -> int:
        """Deliver every matching event of ``[since, until)`` again (same ``webhook-id``s, new
        attempts), whether it was delivered, died, or never had a delivery (the subscription
        was made later, or disabled then); how many events."""
        until = until or utcnow()
        async with self._sessions() as session:
            webhook = await _existing(session, webhook_id, publisher=publisher)
        route = Route(webhook.id, frozenset(webhook.events), dict(webhook.filter))
        after, total = 0, 0
        while True:
            async with self._sessions.begin() as session:
                page = await events_repo.in_window(
                    session, since, until, webhook.events, after_seq=after, limit=_REPLAY_PAGE
                )
                seqs = [e.seq for e in page if route.matches(e.type, e.data)]
                now = utcnow()
                await deliveries_repo.add_many(session, [(s, webhook.id) for s in seqs], now)
                await deliveries_repo.reopen_for_events(session, webhook.id, seqs, now)
            total += len(seqs)
            if len(page) < _REPLAY_PAGE:
                return total
            after = page[-1].seq

    # -- views -------------------------------------------------------------------------------

    async def _publisher_view(self, session: AsyncSession, row: Webhook) -> PublisherOut:
        counts = await deliveries_repo.counts_by_status(session, row.id)
        url, _, topic = row.url.rpartition("#")
        return PublisherOut(
            id=row.id,
            kind=row.options["broker"],
            url=url,
            topic=topic,
            events=row.events,
            filter=WebhookFilter.model_validate(row.filter),
            enabled=row.enabled,
            created_at=row.created_at,
            updated_at=row.updated_at,
            health=_health(row, counts),
        )

    async def _view(self, session: AsyncSession, webhook: Webhook) -> WebhookOut:
        counts = await deliveries_repo.counts_by_status(session, webhook.id)
        auth = self.auth_of(webhook)
        return WebhookOut(
            id=webhook.id,
            url=webhook.url,
            events=webhook.events,
            format=webhook.format,
            filter=WebhookFilter.model_validate(webhook.filter),
            headers=dict(webhook.headers),
            auth=None if auth is None else AuthOut(type=auth.type),
            correlate_by=webhook.options.get("correlate_by", "businessKey"),
            tenant_id=webhook.options.get("tenant_id"),
            process_group=webhook.options.get("process_group"),
            enabled=webhook.enabled,
            ordered=webhook.ordered,
            receipts=webhook.receipts,
            source=webhook.source,
            created_at=webhook.created_at,
            updated_at=webhook.updated_at,
            health=_health(webhook, counts),
        )


def _health(row: Webhook, counts: dict[str, int]) -> WebhookHealth:
    return WebhookHealth(
        last_success_at=row.last_success_at,
        failure_streak=row.failure_streak,
        breaker=row.breaker_state,
        paused_until=row.breaker_until,
        pending=counts.get("pending", 0) + counts.get("failed", 0),
        dead=counts.get("dead", 0),
    )


def is_publisher(webhook: Webhook) -> bool:
    """Whether the subscription is a ``[[publishers]]`` entry (a broker), not a webhook."""
    return bool(webhook.options.get("broker"))


def publisher_key(publisher: PublisherConfig) -> str:
    """What a publisher is known by: its broker's URL without credentials, and its topic
    (``url`` of its row; the entry itself, password included, is stored sealed)."""
    parts = urlsplit(publisher.url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    bare = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return f"{bare}#{publisher.topic}"


def _options(correlate_by: str, tenant_id: str | None, process_group: str | None) -> dict[str, str]:
    options = {"correlate_by": correlate_by}
    if tenant_id is not None:
        options["tenant_id"] = tenant_id
    if process_group is not None:
        options["process_group"] = process_group
    return options


async def _existing(session: AsyncSession, webhook_id: str, *, publisher: bool = False) -> Webhook:
    """The webhook (or, with ``publisher``, the publisher) ``webhook_id``; 404 otherwise."""
    webhook = await webhooks_repo.get(session, webhook_id)
    if webhook is None or is_publisher(webhook) != publisher:
        raise NotFound(f"no {'publisher' if publisher else 'webhook'} {webhook_id}")
    return webhook


async def _delivery_views(session: AsyncSession, rows: Sequence[Delivery]) -> list[DeliveryOut]:
    attempts = await deliveries_repo.attempts_of(session, [d.seq for d in rows])
    events = await events_repo.by_seqs(session, [d.event_seq for d in rows])
    return [_delivery_out(d, events[d.event_seq], attempts.get(d.seq, [])) for d in rows]


def _delivery_out(delivery: Delivery, event: Event, attempts: list[DeliveryAttempt]) -> DeliveryOut:
    open_ = delivery.status in deliveries_repo.OPEN
    return DeliveryOut(
        id=delivery.id,
        webhook_id=delivery.webhook_id,
        event_id=event.id,
        event_type=event.type,
        status=delivery.status,
        attempt_count=delivery.attempts,
        next_attempt_at=delivery.next_attempt_at if open_ else None,
        last_error=delivery.last_error,
        created_at=delivery.created_at,
        updated_at=delivery.updated_at,
        attempts=[
            AttemptOut(
                started_at=a.started_at,
                duration_ms=a.duration_ms,
                status_code=a.status_code,
                error=a.error,
                response=a.response_excerpt,
            )
            for a in attempts
        ],
    )
