"""Typed application keys and the settings of one backbone instance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from backbone.auth import Authenticator
    from backbone.blobs import BlobStore
    from backbone.limits import RateLimiter
    from backbone.notifier import InboxNotifier
    from backbone.store import Store

KIB = 1024
MIB = 1024**2
GIB = 1024**3


@dataclass(frozen=True, slots=True)
class Settings:
    """Every limit of one backbone. The defaults are the documented ones (docs/protocol.md).

    The backbone does not trust its clients: each limit bounds what one request, one identity or
    one client address can make it hold or do, so tests set them small to reach them cheaply.
    """

    data_dir: Path
    max_file_size: int = 2 * GIB
    """One uploaded file (413 ``file_too_large``)."""
    challenge_ttl: float = 60.0
    token_ttl: float = 3600.0
    max_envelope_bytes: int = 4 * MIB
    """One envelope body as sent (413 ``envelope_too_large``)."""
    max_request_bytes: int = 4 * MIB
    """Any other JSON body, an ack with its receipts included (413 ``request_too_large``)."""
    max_recipients: int = 1000
    """Distinct recipients of one envelope (400 ``invalid_envelope``)."""
    registrations_per_minute: int = 30
    """Registration attempts per client IP and minute (429 ``rate_limited``)."""
    envelopes_per_day: int = 100_000
    """New envelopes per sender in a rolling day, counted in hourly buckets (429
    ``quota_exceeded``)."""
    max_stored_bytes: int = 10 * GIB
    """Files plus stored envelopes per identity (507 ``insufficient_storage``)."""
    max_page_bytes: int = 8 * MIB
    """Items of one inbox page (always at least one item)."""
    max_receipts: int = 1000
    """Receipts in one ack (400 ``invalid_request``)."""
    max_receipt_bytes: int = 128 * KIB
    """One receipt object as compact JSON (400 ``invalid_request``); one receipt covers up to
    1000 messages of one sender, so this is about 120 bytes per message."""
    challenges_per_address: int = 16
    """Outstanding challenges per address; a new one drops the oldest."""
    max_challenges: int = 100_000
    """Outstanding challenges in all (429 ``rate_limited``)."""
    prune_interval: float = 60.0
    """Seconds between sweeps for envelopes no inbox holds any more and past their expiry."""


SETTINGS = web.AppKey("backbone.settings", Settings)
STORE: web.AppKey[Store] = web.AppKey("backbone.store")
AUTH: web.AppKey[Authenticator] = web.AppKey("backbone.auth")
BLOBS: web.AppKey[BlobStore] = web.AppKey("backbone.blobs")
NOTIFIER: web.AppKey[InboxNotifier] = web.AppKey("backbone.notifier")
REGISTRATIONS: web.AppKey[RateLimiter] = web.AppKey("backbone.registrations")
