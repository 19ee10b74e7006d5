"""This connector's identity: made on first start, private halves sealed with the master key."""

from __future__ import annotations

import logging

from connector.clock import utcnow
from connector.crypto.at_rest import open_secret, seal_secret
from connector.crypto.keys import IdentityKeys, registration_proof
from connector.errors import PlatformUnavailable
from connector.platform.protocol import Platform
from connector.services.platform_outcomes import platform_errors
from storage.engine import Sessions
from storage.models import Identity
from storage.repositories import identity as identity_repo

log = logging.getLogger(__name__)

_SIGNING = "identity.signing"
_EXCHANGE = "identity.exchange"


async def load_or_create(sessions: Sessions, master_key: bytes) -> tuple[IdentityKeys, Identity]:
    """The identity keys, generated and stored (sealed) on first start."""
    async with sessions.begin() as session:
        row = await identity_repo.get(session)
        if row is None:
            keys = IdentityKeys.generate()
            signing, exchange = keys.private_bytes()
            row = Identity(
                address=keys.address,
                signing_public=keys.signing_public,
                exchange_public=keys.exchange_public,
                signing_private_sealed=seal_secret(master_key, signing, _SIGNING),
                exchange_private_sealed=seal_secret(master_key, exchange, _EXCHANGE),
                registered_at=None,
                created_at=utcnow(),
            )
            await identity_repo.insert(session, row)
            log.info("created identity", extra={"address": keys.address})
            return keys, row
    keys = IdentityKeys.from_private_bytes(
        open_secret(master_key, row.signing_private_sealed, _SIGNING),
        open_secret(master_key, row.exchange_private_sealed, _EXCHANGE),
    )
    return keys, row


async def ensure_registered(
    sessions: Sessions, keys: IdentityKeys, platform: Platform, *, again: bool = False
) -> bool:
    """Register the public keys with the platform (idempotent there); True once registered.

    ``again`` registers even if we did before (the platform answers the same address).
    """
    async with sessions.begin() as session:
        row = await identity_repo.get(session)
        if row is not None and row.registered_at is not None and not again:
            return True
    try:
        with platform_errors("platform registration failed, will retry"):
            address = await platform.register(
                keys.signing_public, keys.exchange_public, registration_proof(keys)
            )
    except PlatformUnavailable as exc:
        log.warning("%s", exc.detail)
        return False
    if address != keys.address:
        raise RuntimeError(f"platform derived address {address}, expected {keys.address}")
    async with sessions.begin() as session:
        row = await identity_repo.get(session)
        if row is not None:
            row.registered_at = utcnow()
    return True
