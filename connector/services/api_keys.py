"""API keys: only SHA-256 hashes are stored; the key itself is shown once.

Keys are high-entropy random strings, so a plain SHA-256 is the right hash (no salt or slow
KDF is needed, and lookups stay O(1) by hash). Configured keys are mirrored into the database
at start-up; keys made by ``connector keys create`` live only there.

A key made by the CLI may expire (``expires_at``) and can be revoked (``revoked_at``), by any
process that shares the database. A verified key is remembered for at most
:data:`RECHECK_AFTER` seconds, so a revocation made elsewhere (the CLI, another replica) is
seen by every running connector within that time.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from connector.clock import utcnow
from connector.errors import Unauthorized
from connector.settings import SCOPES, ApiKeyConfig
from storage.engine import Sessions
from storage.models import ApiKey
from storage.repositories import api_keys as api_keys_repo

_PREFIX = "ck_"
RECHECK_AFTER = 1.0
"""Seconds a verified key is trusted without looking at its row again (revocations elsewhere)."""


class ApiKeyError(ValueError):
    """``connector keys revoke`` cannot do it: no such key, a configured key, several match."""


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


@dataclass(frozen=True)
class KeyInfo:
    """What ``connector keys list`` shows of a key: never the key, nor its hash."""

    id: int
    name: str
    scopes: tuple[str, ...]
    source: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class _Verified:
    principal: Principal
    expires_at: datetime | None
    checked: float  # monotonic time of the lookup


class ApiKeyService:
    def __init__(
        self,
        sessions: Sessions,
        master_key: bytes,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._master_key = master_key
        self._monotonic = monotonic
        self._cache: dict[str, _Verified] = {}

    async def authenticate(self, key: str) -> Principal | None:
        """The key's principal; None for an unknown key.

        Raises :class:`Unauthorized` naming why for a key that expired or was revoked.
        """
        digest = hash_key(key)
        now = self._monotonic()
        verified = self._cache.get(digest)
        if verified is None or now - verified.checked > RECHECK_AFTER:
            self._cache.pop(digest, None)
            async with self._sessions() as session:
                row = await api_keys_repo.by_hash(session, digest)
            if row is None:
                return None
            if row.revoked_at is not None:
                raise Unauthorized(
                    f"the API key '{row.name}' was revoked at {_shown(row.revoked_at)}"
                )
            principal = Principal(row.name, frozenset(row.scopes), digest)
            verified = _Verified(principal, row.expires_at, now)
            if row.source != "bootstrap":  # looked up each time: it goes once another key exists
                self._cache[digest] = verified
        if verified.expires_at is not None and verified.expires_at <= utcnow():
            raise Unauthorized(
                f"the API key '{verified.principal.name}' expired at {_shown(verified.expires_at)}"
            )
        return verified.principal

    async def create(
        self,
        name: str,
        scopes: list[str],
        *,
        source: str = "cli",
        expires_at: datetime | None = None,
    ) -> str:
        unknown = [scope for scope in scopes if scope not in SCOPES]
        if unknown:
            raise ValueError(f"unknown scope(s) {unknown}; known: {', '.join(SCOPES)}")
        if expires_at is not None and expires_at <= utcnow():
            raise ValueError(f"the expiry {_shown(expires_at)} is not in the future")
        key = new_key()
        row = self._row(name, key, scopes, source)
        row.expires_at = expires_at
        async with self._sessions.begin() as session:
            await api_keys_repo.add(session, row)
            await _retire_bootstrap(session)
        return key

    async def keys(self) -> list[KeyInfo]:
        """Every stored key, oldest first, revoked and expired ones included."""
        async with self._sessions() as session:
            rows = await api_keys_repo.all_keys(session)
        return [_info(row) for row in rows]

    async def config_drift(self, configured: list[ApiKeyConfig]) -> tuple[list[str], list[str]]:
        """How the config file's keys differ from those stored, which a start makes equal
        (:meth:`sync_configured`): the names of configured keys not stored yet, and of stored
        ``config`` keys the file no longer has."""
        wanted = {hash_key(item.key): item.name for item in configured}
        async with self._sessions() as session:
            stored = await api_keys_repo.by_source(session, "config")
            known = {row.key_hash for row in await api_keys_repo.all_keys(session)}
        pending = [name for key_hash, name in wanted.items() if key_hash not in known]
        stale = [row.name for row in stored if row.key_hash not in wanted]
        return pending, stale

    async def revoke(
        self, name_or_id: str, configured: list[ApiKeyConfig] | None = None
    ) -> tuple[KeyInfo, bool]:
        """Revoke the key with this id, or else the one key with this name.

        Returns the key and whether this call revoked it (False: it was revoked already).
        Raises :class:`ApiKeyError` for no such key, several keys of that name (revoke by id
        then), or a key from the config file (``api.keys``), which only the config can remove.
        """
        async with self._sessions.begin() as session:
            rows = await api_keys_repo.by_name(session, name_or_id)
            if name_or_id.isdigit() and (
                row := await api_keys_repo.by_id(session, int(name_or_id))
            ):
                rows = [row]
            if not [row for row in rows if row.source != "config"] and any(
                item.name == name_or_id for item in configured or []
            ):
                raise _configured(name_or_id)
            if not rows:
                raise ApiKeyError(f"no API key named or numbered {name_or_id!r} (see keys list)")
            active = [row for row in rows if row.revoked_at is None]
            if len(active) > 1:
                ids = ", ".join(str(row.id) for row in active)
                raise ApiKeyError(
                    f"{len(active)} API keys are named {name_or_id!r} (ids {ids}); "
                    "revoke one by its id"
                )
            row = (active or rows)[-1]
            if row.source == "config":
                raise _configured(row.name)
            revoked = row.revoked_at is None
            if revoked:
                row.revoked_at = utcnow()
            info = _info(row)
        self._cache.clear()
        return info, revoked

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


def _configured(name: str) -> ApiKeyError:
    return ApiKeyError(
        f"the API key {name!r} comes from the config file (api.keys) and cannot be revoked "
        "here; remove it from the config and restart the connector"
    )


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(
        id=row.id,
        name=row.name,
        scopes=tuple(row.scopes),
        source=row.source,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


def _shown(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


async def _retire_bootstrap(session: AsyncSession) -> None:
    for row in await api_keys_repo.by_source(session, "bootstrap"):
        await api_keys_repo.delete(session, row)
