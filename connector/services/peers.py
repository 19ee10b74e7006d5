"""Public keys of other identities: memory, then the database, then the platform.

Addresses are derived from signing keys, so a cached key can never go stale or be swapped:
``derive_address`` is checked on everything the platform answers.
"""

from __future__ import annotations

from dataclasses import dataclass

from connector.clock import utcnow
from connector.crypto.keys import derive_address, usable_exchange_key
from connector.errors import PlatformUnavailable, RecipientNotFound
from connector.platform import errors as platform_errors
from connector.platform.client import PlatformClient
from storage.engine import Sessions
from storage.repositories import peers as peers_repo


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


class PeerDirectory:
    def __init__(self, sessions: Sessions, platform: PlatformClient) -> None:
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
        """Keys for every address; :class:`RecipientNotFound` names the unknown ones."""
        found = {a: self._cache[a] for a in addresses if a in self._cache}
        missing = [a for a in addresses if a not in found]
        if missing:
            async with self._sessions() as session:
                for address, row in (await peers_repo.get_many(session, missing)).items():
                    found[address] = self._cache[address] = PeerKeys.of(
                        address, row.signing_public, row.exchange_public
                    )
        missing = [a for a in addresses if a not in found]
        unknown: list[str] = []
        fetched: list[PeerKeys] = []
        for address in missing:
            try:
                identity = await self._platform.get_identity(address)
            except platform_errors.IdentityNotFound:
                unknown.append(address)
                continue
            except platform_errors.PlatformUnavailable as exc:
                raise PlatformUnavailable(f"cannot look up {address}: {exc}") from exc
            if derive_address(identity.signing_public) != address:
                unknown.append(address)  # the platform answered a key that does not own it
                continue
            fetched.append(PeerKeys.of(address, identity.signing_public, identity.exchange_public))
        if unknown:
            raise RecipientNotFound(
                f"unknown recipient(s): {', '.join(unknown)}", recipients=unknown
            )
        if fetched:
            now = utcnow()
            async with self._sessions.begin() as session:
                for peer in fetched:
                    await peers_repo.upsert(
                        session, peer.address, peer.signing_public, peer.exchange_public, now
                    )
            for peer in fetched:
                found[peer.address] = self._cache[peer.address] = peer
        return found
