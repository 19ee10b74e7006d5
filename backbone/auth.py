"""Challenge-response authentication and bearer tokens.

A client asks for a challenge (32 random bytes, valid ``challenge_ttl``, single use), signs
``AUTH_CONTEXT + challenge`` with its identity's Ed25519 key and trades the signature for a bearer
token (32 random bytes, valid ``token_ttl``). Only the token's SHA-256 is stored.

Protected handlers call :func:`authenticate` first; there is no path-based allow list.

Challenges cost memory until they expire, and anyone may ask for one, so they are bounded: at
most ``challenges_per_address`` per address (a new one drops that address's oldest) and at most
``max_challenges`` issued within one ``challenge_ttl`` in all (beyond it: 429 ``rate_limited``).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import deque
from collections.abc import Callable

from aiohttp import web

from backbone import keys
from backbone.context import AUTH
from backbone.errors import (
    IdentityNotFound,
    InvalidChallenge,
    InvalidSignature,
    RateLimited,
    Unauthorized,
)
from backbone.store import Store
from backbone.timeutil import iso
from backbone.validation import b64, encode_b64, read_object, text

CHALLENGE_SIZE = 32
_CACHE_LIMIT = 100_000


class Challenges:
    """Outstanding challenges: a map to look them up, a queue in expiry order to drop them.

    Every challenge lives for the same ttl, so issue order is expiry order and expired ones are
    popped from the front: no request rebuilds or scans the whole map. A challenge used or
    dropped early leaves its queue entry behind until it expires; the global cap counts queue
    entries, so memory is bounded by ``cap`` whatever clients do.
    """

    def __init__(self, *, per_address: int, cap: int) -> None:
        self._per_address = max(1, per_address)
        self._cap = cap
        self._issued: dict[bytes, tuple[str, float]] = {}
        self._queue: deque[tuple[float, bytes]] = deque()
        self._by_address: dict[str, deque[bytes]] = {}

    def __len__(self) -> int:
        return len(self._issued)

    def add(self, address: str, challenge: bytes, expires_at: float, now: float) -> None:
        """Keep a new challenge; RateLimited when the global cap is reached."""
        self._expire(now)
        if len(self._queue) >= self._cap:
            raise RateLimited(self._queue[0][0] - now if self._queue else 1.0)
        mine = self._by_address.get(address)
        if mine is not None and len(mine) >= self._per_address:
            self._forget(mine[0])
        self._issued[challenge] = (address, expires_at)
        self._queue.append((expires_at, challenge))
        self._by_address.setdefault(address, deque()).append(challenge)

    def take(self, challenge: bytes, now: float) -> tuple[str, float] | None:
        """Remove and answer a challenge's (address, expiry) if it is outstanding."""
        self._expire(now)
        return self._forget(challenge)

    def _expire(self, now: float) -> None:
        while self._queue and self._queue[0][0] <= now:
            self._forget(self._queue.popleft()[1])

    def _forget(self, challenge: bytes) -> tuple[str, float] | None:
        entry = self._issued.pop(challenge, None)
        if entry is None:
            return None
        mine = self._by_address[entry[0]]
        mine.remove(challenge)  # at most per_address long
        if not mine:
            del self._by_address[entry[0]]
        return entry


class Authenticator:
    def __init__(
        self,
        store: Store,
        *,
        challenge_ttl: float,
        token_ttl: float,
        challenges_per_address: int = 16,
        max_challenges: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._challenge_ttl = challenge_ttl
        self._token_ttl = token_ttl
        self._clock = clock
        # Challenges live only in memory: a restart merely makes clients ask again.
        self._challenges = Challenges(per_address=challenges_per_address, cap=max_challenges)
        self._tokens: dict[bytes, tuple[str, float]] = {}

    async def challenge(self, address: str) -> tuple[bytes, float]:
        if await self._store.get_identity(address) is None:
            raise IdentityNotFound()
        now = self._clock()
        challenge = secrets.token_bytes(CHALLENGE_SIZE)
        expires_at = now + self._challenge_ttl
        self._challenges.add(address, challenge, expires_at, now)
        return challenge, expires_at

    async def token(self, address: str, challenge: bytes, signature: bytes) -> tuple[str, float]:
        now = self._clock()
        issued = self._challenges.take(challenge, now)  # used up, whatever comes next
        if issued is None or issued[0] != address or issued[1] <= now:
            raise InvalidChallenge()
        identity = await self._store.get_identity(address)
        if identity is None:
            raise IdentityNotFound()
        if not keys.verify_challenge(identity.signing_key, challenge, signature):
            raise InvalidSignature()
        token = secrets.token_urlsafe(32)
        expires_at = now + self._token_ttl
        await self._store.save_token(_digest(token), address, expires_at, now)
        return token, expires_at

    async def address_for(self, token: str) -> str:
        """The identity a bearer token stands for; Unauthorized if none or expired."""
        digest = _digest(token)
        entry = self._tokens.get(digest)
        if entry is None:
            entry = await self._store.find_token(digest)
            if entry is None:
                raise Unauthorized("The bearer token is unknown.")
            if len(self._tokens) >= _CACHE_LIMIT:
                self._tokens.clear()
            self._tokens[digest] = entry
        address, expires_at = entry
        if expires_at <= self._clock():
            self._tokens.pop(digest, None)
            raise Unauthorized("The bearer token has expired.")
        return address


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def authenticate(request: web.Request) -> str:
    """The address behind the request's bearer token, or Unauthorized."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Send 'Authorization: Bearer <token>'.")
    return await request.app[AUTH].address_for(token)


async def post_challenge(request: web.Request) -> web.Response:
    body = await read_object(request)
    challenge, expires_at = await request.app[AUTH].challenge(text(body, "address"))
    return web.json_response({"challenge": encode_b64(challenge), "expiresAt": iso(expires_at)})


async def post_token(request: web.Request) -> web.Response:
    body = await read_object(request)
    token, expires_at = await request.app[AUTH].token(
        text(body, "address"), b64(body, "challenge"), b64(body, "signature")
    )
    return web.json_response({"token": token, "expiresAt": iso(expires_at)})


def routes(app: web.Application) -> None:
    app.router.add_post("/v1/auth/challenge", post_challenge)
    app.router.add_post("/v1/auth/token", post_token)
