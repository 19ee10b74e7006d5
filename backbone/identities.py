"""Identity registration (proof of possession) and public key lookup.

The proof is stored and answered with the keys, so a client that does not trust the backbone can
check for itself that the signing key signed the exchange key. Registration is open, so it is
rate limited per client IP (the peer address of the connection: behind a reverse proxy that is
the proxy, which then has to limit on its own).
"""

from __future__ import annotations

from aiohttp import web

from backbone import keys
from backbone.context import REGISTRATIONS, STORE
from backbone.errors import IdentityNotFound, InvalidProof, InvalidRequest
from backbone.store import Identity
from backbone.timeutil import now_iso
from backbone.validation import MAX_TEXT, b64, encode_b64, read_object, storable

SIGNATURE_SIZE = 64


async def post_identity(request: web.Request) -> web.Response:
    # Before the body is read or a signature checked: a refused attempt costs next to nothing.
    request.app[REGISTRATIONS].take(request.remote or "")
    body = await read_object(request)
    signing_key = b64(body, "signingKey", keys.KEY_SIZE)
    exchange_key = b64(body, "exchangeKey", keys.KEY_SIZE)
    proof = b64(body, "proof", SIGNATURE_SIZE)
    if not keys.valid_exchange_key(exchange_key):
        raise InvalidRequest("'exchangeKey' is not an X25519 public key.")
    if not keys.verify_registration(signing_key, exchange_key, proof):
        raise InvalidProof()
    candidate = Identity(
        address=keys.derive_address(signing_key),
        signing_key=signing_key,
        exchange_key=exchange_key,
        created_at=now_iso(),
        proof=proof,
    )
    identity, created = await request.app[STORE].register_identity(candidate)
    return web.json_response({"address": identity.address}, status=201 if created else 200)


async def get_identity(request: web.Request) -> web.Response:
    address = request.match_info["address"]
    if not storable(address, MAX_TEXT):
        raise IdentityNotFound()
    identity = await request.app[STORE].get_identity(address)
    if identity is None:
        raise IdentityNotFound()
    return web.json_response(
        {
            "address": identity.address,
            "signingKey": encode_b64(identity.signing_key),
            "exchangeKey": encode_b64(identity.exchange_key),
            "proof": None if identity.proof is None else encode_b64(identity.proof),
            "createdAt": identity.created_at,
        }
    )


def routes(app: web.Application) -> None:
    app.router.add_post("/v1/identities", post_identity)
    app.router.add_get("/v1/identities/{address}", get_identity)
