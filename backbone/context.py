"""Typed application keys and the settings of one backbone instance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from backbone.auth import Authenticator
    from backbone.blobs import BlobStore
    from backbone.notifier import InboxNotifier
    from backbone.store import Store


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path
    max_file_size: int = 2 * 1024**3
    challenge_ttl: float = 60.0
    token_ttl: float = 3600.0
    max_envelope_size: int = 16 * 1024**2


SETTINGS = web.AppKey("backbone.settings", Settings)
STORE: web.AppKey[Store] = web.AppKey("backbone.store")
AUTH: web.AppKey[Authenticator] = web.AppKey("backbone.auth")
BLOBS: web.AppKey[BlobStore] = web.AppKey("backbone.blobs")
NOTIFIER: web.AppKey[InboxNotifier] = web.AppKey("backbone.notifier")
