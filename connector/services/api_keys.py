"""API keys: only SHA-256 hashes are stored; the key itself is shown once.

Keys are high-entropy random strings, so a plain SHA-256 is the right hash (no salt or slow
KDF is needed, and lookups stay O(1) by hash). Configured keys are mirrored into the database
at start-up; keys made by ``connector keys create`` live only there.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from connector.clock import utcnow
from connector.settings import SCOPES, ApiKeyConfig
from storage.engine import Sessions
from storage.models import ApiKey
from storage.repositories import api_keys as api_keys_repo

_PREFIX = "ck_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's name and scopes, and ``key_hash`` (the SHA-256 of the key as
    stored), which stays the same across restarts and so scopes per-key state such as
    idempotency keys."""

    name: str
    scopes: frozenset[str]
    key_hash: str

    def allows(self, scope: str) -> bool:
        return "*" in self.scopes or scope in self.scopes


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return _PREFIX + secrets.token_urlsafe(32)


class ApiKeyService:
    def __init__(self, sessions: Sessions, master_key: bytes) -> None:
        self._sessions = sessions
        self._master_key = master_key
        self._cache: dict[str, Principal] = {}

    async def authenticate(self, key: str) -> Principal | None:
        digest = hash_key(key)
        principal = self._cache.get(digest)
        if principal is None:
            async with self._sessions() as session:
                row = await api_keys_repo.by_hash(session, digest)
            if row is None:
                return None
            principal = Principal(row.name, frozenset(row.scopes), digest)
            if row.source != "bootstrap":  # looked up each time: it goes once another key exists
                self._cache[digest] = principal
        return principal

    async def create(self, name: str, scopes: list[str], *, source: str = "cli") -> str:
        unknown = [scope for scope in scopes if scope not in SCOPES]
        if unknown:
            raise ValueError(f"unknown scope(s) {unknown}; known: {', '.join(SCOPES)}")
        key = new_key()
        async with self._sessions.begin() as session:
            await api_keys_repo.add(session, self._row(name, key, scopes, source))
            await _retire_bootstrap(session)
        return key

    async def sync_configured(self, configured: list[ApiKeyConfig]) -> None:
        """Make the ``config`` keys in the database exactly those of the config file."""
        self._cache.clear()
        async with self._sessions.begin() as session:
            for row in await api_keys_repo.by_source(session, "config"):
                await api_keys_repo.delete(session, row)
            await session.flush()
            for item in configured:
                existing = await api_keys_repo.by_hash(session, hash_key(item.key))
                if existing is None:
                    await api_keys_repo.add(
                        session, self._row(item.name, item.key, item.scopes, "config")
                    )
            if await api_keys_repo.count_other_than(session, "bootstrap"):
                await _retire_bootstrap(session)

    async def bootstrap_key(self) -> str | None:
        """With no key at all, make one with every scope and return it; else None.

        The key is returned only by the start that makes it (``connector serve`` prints it
        then, once) and only its hash is kept. It works until any other key exists: a
        configured one or one made by ``connector keys create`` removes it.
        """
        async with self._sessions.begin() as session:
            for row in await api_keys_repo.by_source(session, "bootstrap"):
                row.sealed_key = None  # older versions kept it sealed to print it every start
            if await api_keys_repo.count(session):
                return None
            key = new_key()
            await api_keys_repo.add(session, self._row("bootstrap", key, ["*"], "bootstrap"))
            return key

    @staticmethod
    def _row(name: str, key: str, scopes: list[str], source: str) -> ApiKey:
        return ApiKey(
            name=name,
            key_hash=hash_key(key),
            scopes=list(scopes),
            source=source,
            sealed_key=None,
            created_at=utcnow(),
        )


async def _retire_bootstrap(session: AsyncSession) -> None:
    for row in await api_keys_repo.by_source(session, "bootstrap"):
        await api_keys_repo.delete(session, row)
