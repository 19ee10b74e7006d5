"""Public keys of other identities: memory, then the pins in the database, then the platform.

The platform is not trusted with keys. An identity it answers is used only when it is the
address we asked for, that address is derived from its signing key, and its registration
proof (the signing key's signature over both public keys) verifies. Otherwise it is refused
loudly (:class:`PeerKeyInvalid`, a WARNING naming the address) and nothing is stored.

The first verified keys of an address are pinned in the database and served from there (and
from memory) without asking the platform again. An answer with other keys for an address that
is pinned by then (a concurrent first lookup, another replica) is refused the same way and
never replaces the pin.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from connector.clock import utcnow
from connector.crypto.keys import derive_address, usable_exchange_key, verify_registration_proof
from connector.errors import PeerKeyInvalid, RecipientNotFound
from connector.platform.models import PeerIdentity
from connector.platform.protocol import Platform
from connector.services.platform_outcomes import platform_errors
from storage.engine import Sessions
from storage.repositories import peers as peers_repo

log = logging.getLogger(__name__)

_SIGNING_KEY_SIZE = 32


@dataclass(frozen=True)
class PeerKeys:
    address: str
    signing_public: bytes
    exchange_public: bytes
    can_receive: bool = True
    """False when its exchange key is a low-order point: nothing can be encrypted to it. Its
    signatures still verify; only sending to it is refused (as an unknown recipient)."""

    @classmethod
    def of(cls, address: str, signing_public: bytes, exchange_public: bytes) -> PeerKeys:
        """Keys as registered, with ``can_receive`` checked once (one trial agreement)."""
        return cls(address, signing_public, exchange_public, usable_exchange_key(exchange_public))


def refusal(address: str, identity: PeerIdentity) -> str | None:
    """Why the platform's answer for ``address`` must not be used, or None when it may be."""
    if identity.address != address:
        return "the platform answered another address"
    signing = identity.signing_public
    if len(signing) != _SIGNING_KEY_SIZE or derive_address(signing) != address:
        return "the signing key does not own the address"
    if identity.proof is None:
        return "the platform answered no registration proof"
    if not verify_registration_proof(signing, identity.exchange_public, identity.proof):
        return "the registration proof does not verify for these keys"
    return None


def fingerprint(signing_public: bytes, exchange_public: bytes) -> str:
    """A short name for a pair of keys in logs (they are public, but logs need not hold them)."""
    return hashlib.sha256(signing_public + b"\x00" + exchange_public).hexdigest()[:16]


class PeerDirectory:
    def __init__(self, sessions: Sessions, platform: Platform) -> None:
        self._sessions = sessions
        self._platform = platform
        self._cache: dict[str, PeerKeys] = {}

    async def recipients(self, addresses: list[str]) -> dict[str, PeerKeys]:
        """Like :meth:`resolve`, and a peer whose key cannot be encrypted to is unknown too."""
        found = await self.resolve(addresses)
        unusable = [address for address in addresses if not found[address].can_receive]
        if unusable:
            raise RecipientNotFound(
                f"recipient(s) registered an exchange key nothing can be encrypted to: "
                f"{', '.join(unusable)}",
                recipients=unusable,
            )
        return found

    async def resolve(self, addresses: list[str]) -> dict[str, PeerKeys]:
        """Keys for every address, verified and pinned.

        :class:`RecipientNotFound` names the addresses the platform does not know,
        :class:`PeerKeyInvalid` those it answered keys for that fail verification or differ
        from the pin; either way nothing of this call is stored.
        """
        found = {a: self._cache[a] for a in addresses if a in self._cache}
        missing = list(dict.fromkeys(a for a in addresses if a not in found))
        if missing:
            async with self._sessions() as session:
                for address, row in (await peers_repo.get_many(session, missing)).items():
                    found[address] = self._cache[address] = PeerKeys.of(
                        address, row.signing_public, row.exchange_public
                    )
            missing = [a for a in missing if a not in found]
        if missing:
            for peer in await self._fetch(missing):
                found[peer.address] = self._cache[peer.address] = peer
        return found

    async def _fetch(self, addresses: list[str]) -> list[PeerKeys]:
        """Ask the platform, verify every answer, then pin them all (or none)."""
        unknown: list[str] = []
        invalid: list[str] = []
        fetched: list[PeerKeys] = []
        for address in addresses:
            try:
                with platform_errors(f"cannot look up {address}", {RecipientNotFound: None}):
                    identity = await self._platform.get_identity(address)
            except RecipientNotFound:
                unknown.append(address)
                continue
            reason = refusal(address, identity)
            if reason is not None:
                _warn(address, reason, identity.signing_public, identity.exchange_public)
                invalid.append(address)
                continue
            fetched.append(PeerKeys.of(address, identity.signing_public, identity.exchange_public))
        if invalid:
            raise _invalid(invalid, "the platform answered keys that fail verification")
        if unknown:
            raise RecipientNotFound(
                f"unknown recipient(s): {', '.join(unknown)}", recipients=unknown
            )
        await self._pin(fetched)
        return fetched

    async def _pin(self, peers: list[PeerKeys]) -> None:
        """Store the keys of ``peers`` unless pinned already; other pinned keys refuse them all.

        Raising inside the transaction rolls it back, so a refused call pins nothing.
        """
        now = utcnow()
        async with self._sessions.begin() as session:
            conflicts: list[str] = []
            for peer in peers:
                offered = (peer.signing_public, peer.exchange_public)
                pinned = await peers_repo.insert_if_absent(session, peer.address, *offered, now)
                if pinned != offered:
                    _warn(
                        peer.address,
                        f"the platform answered keys other than the pinned {fingerprint(*pinned)}",
                        *offered,
                    )
                    conflicts.append(peer.address)
            if conflicts:
                raise _invalid(conflicts, "the platform answered keys other than the pinned ones")


def _warn(address: str, reason: str, signing_public: bytes, exchange_public: bytes) -> None:
    log.warning(
        "refused the keys of peer %s (%s): %s",
        address,
        fingerprint(signing_public, exchange_public),
        reason,
        extra={"peer": address},
    )


def _invalid(addresses: list[str], reason: str) -> PeerKeyInvalid:
    return PeerKeyInvalid(
        f"{reason}, refused for: {', '.join(addresses)} (nothing was stored or sealed)",
        peers=addresses,
    )
