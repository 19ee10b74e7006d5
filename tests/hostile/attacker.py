"""A hostile identity speaking the backbone protocol by hand (raw aiohttp, not PlatformClient).

It registers its own keys, fetches a token, and PUTs envelopes it made itself. The envelopes are
*validly signed by the attacker*, so the platform accepts them and only the victim's connector
has to cope with what is inside: a poison header field (re-signed after the change), or a body
with poison fields sealed exactly like a real one.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import secrets
import string
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from connector.crypto import envelope as envelope_module
from connector.crypto.envelope import ENVELOPE_CONTEXT, ENVELOPE_VERSION, canonical_bytes
from connector.crypto.keys import IdentityKeys, registration_proof, sign_challenge

_ALPHANUMERIC = string.ascii_letters + string.digits


def new_message_id() -> str:
    return "MSG" + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(17))


def new_file_id() -> str:
    return "FIL" + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(17))


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def sign(keys: IdentityKeys, envelope: dict[str, Any]) -> dict[str, Any]:
    """(Re-)sign ``envelope`` in place with ``keys``, the way ``seal_envelope`` signs."""
    envelope["signature"] = b64(keys.sign(ENVELOPE_CONTEXT + canonical_bytes(envelope)))
    return envelope


def seal(
    sender: IdentityKeys,
    recipients: Mapping[str, bytes],
    body: Mapping[str, Any] | bytes,
    *,
    message_id: str | None = None,
    created_at: str | None = None,
    expires_at: str | None = "default",
    recipient_list: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A signed envelope like ``seal_envelope`` makes, but accepting what it would refuse.

    ``body`` may be raw bytes (so it can hold JSON that ``seal_envelope`` refuses to produce,
    such as a lone surrogate written as an escape). ``recipient_list`` is the ``recipients``
    field as sent (duplicates allowed); keys are wrapped for ``recipients`` and the sender.
    The payload's associated data is computed from the header as a receiver will, so the
    envelope decrypts: only the poison inside is wrong.
    """
    now = datetime.now(UTC)
    message_id = message_id or new_message_id()
    envelope: dict[str, Any] = {
        "version": ENVELOPE_VERSION,
        "id": message_id,
        "sender": sender.address,
        "recipients": list(recipient_list if recipient_list is not None else recipients),
        "createdAt": created_at or iso(now),
        "expiresAt": iso(now + timedelta(days=1)) if expires_at == "default" else expires_at,
    }
    if isinstance(body, bytes):
        body_bytes = body
    else:
        body_bytes = json.dumps(dict(body), separators=(",", ":")).encode("ascii")
    content_key = secrets.token_bytes(32)
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(content_key).encrypt(nonce, body_bytes, envelope_module._payload_aad(envelope))
    parties = {**dict(recipients), sender.address: sender.exchange_public}
    envelope["keys"] = {
        address: b64(envelope_module._wrap_key(content_key, public, message_id))
        for address, public in parties.items()
    }
    envelope["payload"] = b64(nonce + sealed)
    return sign(sender, envelope)


def descriptor(**overrides: Any) -> dict[str, Any]:
    """A plausible attachment descriptor (camelCase, as it travels inside a body)."""
    value: dict[str, Any] = {
        "id": new_file_id(),
        "filename": "invoice.pdf",
        "mimetype": "application/pdf",
        "size": 1000,
        "cipherSize": 1000 + 16 + 24,
        "chunkSize": 1 << 20,
        "sha256": secrets.token_hex(32),
        "key": b64(os.urandom(32)),
        "title": None,
        "description": None,
        "tags": [],
        "expiresAt": None,
    }
    value.update(overrides)
    return value


class Attacker:
    """One hostile identity on the backbone, with its own keys and bearer token."""

    def __init__(self, base_url: str, http: aiohttp.ClientSession) -> None:
        self.base = base_url.rstrip("/")
        self.http = http
        self.keys = IdentityKeys.generate()
        self._token: str | None = None

    @property
    def address(self) -> str:
        return self.keys.address

    async def register(self) -> None:
        body = {
            "signingKey": b64(self.keys.signing_public),
            "exchangeKey": b64(self.keys.exchange_public),
            "proof": b64(registration_proof(self.keys)),
        }
        async with self.http.post(f"{self.base}/v1/identities", json=body) as response:
            assert response.status in (200, 201), await response.text()

    async def token(self) -> str:
        if self._token is None:
            async with self.http.post(
                f"{self.base}/v1/auth/challenge", json={"address": self.address}
            ) as response:
                assert response.status == 200, await response.text()
                challenge = base64.b64decode((await response.json())["challenge"])
            body = {
                "address": self.address,
                "challenge": b64(challenge),
                "signature": b64(sign_challenge(self.keys, challenge)),
            }
            async with self.http.post(f"{self.base}/v1/auth/token", json=body) as response:
                assert response.status == 200, await response.text()
                self._token = (await response.json())["token"]
        return self._token

    async def put_raw(self, message_id: str, data: bytes) -> tuple[int, Any]:
        """PUT raw bytes as the envelope of ``message_id``; answer status and JSON (or text)."""
        headers = {
            "Authorization": f"Bearer {await self.token()}",
            "Content-Type": "application/json",
        }
        async with self.http.put(
            f"{self.base}/v1/messages/{message_id}", data=io.BytesIO(data), headers=headers
        ) as response:
            raw = await response.read()
            try:
                return response.status, json.loads(raw)
            except ValueError:
                return response.status, raw[:500].decode("utf-8", "replace")

    async def put(self, envelope: Mapping[str, Any]) -> tuple[int, Any]:
        data = json.dumps(envelope, separators=(",", ":")).encode("ascii")
        return await self.put_raw(str(envelope["id"]), data)

    async def send(self, envelope: Mapping[str, Any]) -> dict[str, Any]:
        """PUT and insist the backbone took it (the victim's connector then has to cope)."""
        status, answer = await self.put(envelope)
        assert status == 201, f"the backbone refused the attacker's envelope: {status} {answer}"
        return dict(envelope)

    async def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, Any, Mapping[str, str]]:
        """Any authenticated call: status, JSON answer (or text) and headers."""
        headers = {"Authorization": f"Bearer {await self.token()}"}
        async with self.http.request(
            method, self.base + path, json=json_body, params=params, headers=headers
        ) as response:
            raw = await response.read()
            try:
                answer: Any = json.loads(raw)
            except ValueError:
                answer = raw[:500].decode("utf-8", "replace")
            return response.status, answer, response.headers

    def seal(
        self, recipients: Mapping[str, bytes], body: Mapping[str, Any] | bytes, **kw: Any
    ) -> dict[str, Any]:
        return seal(self.keys, recipients, body, **kw)

    def sign(self, envelope: dict[str, Any]) -> dict[str, Any]:
        return sign(self.keys, envelope)


# receipts, as pinned in issue8-spec.md (written here from the spec, not imported, so the
# tests do not depend on the code they check)

RECEIPT_CONTEXT = b"connector-receipt-v2\x00"


def _canonical(value: Mapping[str, Any]) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def envelope_digest(envelope: Mapping[str, Any]) -> str:
    """Base64 SHA-256 of the canonical JSON of the whole envelope, signature included."""
    return b64(hashlib.sha256(_canonical(envelope)).digest())


def forge_receipt(
    signer: IdentityKeys,
    *,
    message_id: str,
    sender: str,
    recipient: str,
    digest: str,
    status: str = "delivered",
) -> dict[str, Any]:
    """A receipt object in the pinned shape (one page's messages of one sender; here one),
    signed by ``signer`` (who may not be the recipient)."""
    receipt: dict[str, Any] = {
        "version": 2,
        "sender": sender,
        "recipient": recipient,
        "at": datetime.now(UTC).isoformat(timespec="microseconds"),
        "messages": [{"id": message_id, "digest": digest, "status": status}],
    }
    receipt["signature"] = b64(signer.sign(RECEIPT_CONTEXT + _canonical(receipt)))
    return receipt


def opens_with(envelope: Mapping[str, Any], exchange_private: X25519PrivateKey) -> list[str]:
    """The addresses whose wrapped key in ``envelope`` this X25519 private key unwraps."""
    holder = IdentityKeys(signing=Ed25519PrivateKey.generate(), exchange=exchange_private)
    opened = []
    for address, wrapped in dict(envelope.get("keys") or {}).items():
        try:
            envelope_module._unwrap_key(base64.b64decode(wrapped), holder, str(envelope.get("id")))
        except Exception:  # not wrapped to this key: what we hope for
            continue
        opened.append(address)
    return opened
