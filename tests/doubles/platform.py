"""An in-memory platform: the backbone's semantics (docs/protocol.md) without HTTP or SQLite.

:class:`PlatformDouble` plays the backbone: identities, files, envelopes, the inboxes and their
one cursor sequence, the limits (same names and defaults as ``backbone.context.Settings``).
:meth:`PlatformDouble.client` hands out a :class:`DoubleClient`, which implements
:class:`connector.platform.Platform` for one identity and raises exactly the
``connector.platform.errors`` class that ``PlatformClient`` raises for the backbone's answer to
the same request. ``tests/contract`` runs one set of tests against both, which keeps this honest.

Covered: registration with proof (and its refusals), lookups, authentication as far as a client
can tell (an unregistered identity or a wrong signer is refused), file upload/download/delete
with owners, tombstones and the size limit, idempotent sends per (sender, id) with every
envelope check, unknown recipients, inbox paging by count and bytes, long-poll, ack with
receipt relay, the per-day and stored-bytes quotas, ``down`` for outages and ``failing`` for
one kind of call failing (an ack lost, say); ``puts`` and ``acks`` log what was sent.

Left out: HTTP itself (tokens expiring, 401 retries, malformed answers, timeouts, the client's
page-size guard), the registration rate limit, pruning of expired envelopes (the double keeps
every envelope, so a repeat is always recognised), and the concurrency of a real server.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from backbone import keys as backbone_keys
from backbone.timeutil import utc_timestamp
from backbone.validation import FILE_ID, MESSAGE_ID
from connector.platform.errors import (
    PlatformFileNotFoundError,
    PlatformFileTooLargeError,
    PlatformIdentityNotFoundError,
    PlatformQuotaExceededError,
    PlatformRecipientNotFoundError,
    PlatformRejectedError,
    PlatformUnavailableError,
)
from connector.platform.models import InboxItem, InboxPage, PeerIdentity

__all__ = ["DoubleClient", "PlatformDouble"]

KIB, MIB, GIB = 1024, 1024**2, 1024**3
ROW_OVERHEAD = 512
"""Stored bytes every file row and envelope costs on top of its size (``backbone.schema``)."""
ITEM_OVERHEAD = 128
"""Bytes every inbox item counts towards a page on top of its envelope or receipt."""
MAX_TEXT = 1024
MAX_CURSOR = 2**63 - 1
MAX_LIMIT, MAX_WAIT = 1000, 60.0
HOUR, HOURS_PER_DAY = 3600, 24

Signer = Callable[[bytes], bytes]


def _refused(status: int, code: str, detail: str) -> PlatformRejectedError:
    return PlatformRejectedError(status, code, detail)


def _wire(body: Mapping[str, Any]) -> bytes:
    """A JSON body as the client puts it on the wire."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def _canonical(value: Any) -> str:
    """As the backbone stores (and compares) an envelope or a receipt: sorted, compact."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass
class _File:
    owner: str
    data: bytes | None = None  # None: claimed, no upload completed
    deleted: bool = False


@dataclass(frozen=True)
class _Envelope:
    sender: str
    canonical: str

    @property
    def size(self) -> int:
        return len(self.canonical.encode())


@dataclass(frozen=True)
class _Item:
    cursor: int
    recipient: str
    envelope: _Envelope | None = None  # message items
    receipt_from: str | None = None  # receipt items: who acknowledged
    receipt: str | None = None  # receipt items: the posted object, canonical JSON

    @property
    def size(self) -> int:
        if self.envelope is not None:
            return self.envelope.size + ITEM_OVERHEAD
        assert self.receipt is not None and self.receipt_from is not None
        return len(self.receipt.encode()) + len(self.receipt_from.encode()) + ITEM_OVERHEAD

    def as_item(self) -> InboxItem:
        if self.envelope is not None:
            envelope = json.loads(self.envelope.canonical)  # a copy: callers may change it
            message_id = envelope.get("id")
            return InboxItem(
                cursor=self.cursor,
                type="message",
                envelope=envelope,
                message_id=message_id if isinstance(message_id, str) else None,
            )
        assert self.receipt is not None
        return InboxItem(
            cursor=self.cursor,
            type="receipt",
            recipient=self.receipt_from,
            receipt=json.loads(self.receipt),
        )


@dataclass
class PlatformDouble:
    """The platform's state, shared by every :class:`DoubleClient` it hands out."""

    max_file_size: int = 2 * GIB
    max_envelope_bytes: int = 4 * MIB
    max_request_bytes: int = 4 * MIB
    max_recipients: int = 1000
    envelopes_per_day: int = 100_000
    max_stored_bytes: int = 10 * GIB
    max_page_bytes: int = 8 * MIB
    max_receipts: int = 1000
    max_receipt_bytes: int = 128 * KIB
    clock: Callable[[], float] = time.time

    down: bool = False
    """While True every call fails as an unreachable platform would (``health()`` is False)."""
    failing: set[str] = field(default_factory=set, init=False)
    """Names of client methods (``"ack"``, ...) that fail so, while the others work."""
    puts: list[str] = field(default_factory=list, init=False)
    """The id of every envelope put that reached the platform, repeats and refusals included."""
    acks: list[tuple[str, int, list[dict[str, Any]]]] = field(default_factory=list, init=False)
    """(caller, cursor, receipts) of every ack asked for, also those that failed."""

    identities: dict[str, PeerIdentity] = field(default_factory=dict, init=False)
    files: dict[str, _File] = field(default_factory=dict, init=False)
    envelopes: dict[tuple[str, str], _Envelope] = field(default_factory=dict, init=False)
    """(sender, id) -> the envelope accepted: ids are unique per sender."""
    _inbox: list[_Item] = field(default_factory=list, init=False)  # in cursor order
    _cursor: int = field(default=0, init=False)
    _usage: dict[str, int] = field(default_factory=dict, init=False)
    _send_hours: dict[str, list[int]] = field(default_factory=dict, init=False)
    _waiters: dict[str, asyncio.Event] = field(default_factory=dict, init=False)

    def client(self) -> DoubleClient:
        """A client of this platform; ``set_identity`` it as a ``PlatformClient``."""
        return DoubleClient(self)

    def accepted(self, sender: str) -> list[dict[str, Any]]:
        """The envelopes accepted from ``sender``, in the order they came."""
        return [json.loads(e.canonical) for (s, _), e in self.envelopes.items() if s == sender]

    def inbox_of(self, address: str) -> list[InboxItem]:
        """What ``address`` would read now (not yet acknowledged)."""
        return [item.as_item() for item in self._inbox if item.recipient == address]

    # -- the platform's side of each call ------------------------------------------------------

    def reachable(self, call: str) -> None:
        if self.down or call in self.failing:
            raise PlatformUnavailableError(f"platform unreachable: {call} failed (double)")

    def _append(self, recipient: str, **content: Any) -> None:
        """One more item in ``recipient``'s inbox, under the next cursor; wakes its long-poll."""
        self._cursor += 1
        item = _Item(self._cursor, recipient, **content)
        self._inbox.append(item)
        waiter = self._waiters.pop(recipient, None)
        if waiter is not None:
            waiter.set()

    def watch(self, address: str) -> asyncio.Event:
        return self._waiters.setdefault(address, asyncio.Event())

    def page(self, address: str, after: int, limit: int) -> list[_Item]:
        """At most ``limit`` items and ``max_page_bytes`` of them, but at least one."""
        items: list[_Item] = []
        total = 0
        for item in self._inbox:
            if item.recipient != address or item.cursor <= after:
                continue
            total += item.size
            if len(items) == limit or (items and total > self.max_page_bytes):
                break
            items.append(item)
        return items

    def add_usage(self, address: str, delta: int) -> None:
        self._usage[address] = self._usage.get(address, 0) + delta

    def usage(self, address: str) -> int:
        return self._usage.get(address, 0)

    def storage_full(self) -> PlatformQuotaExceededError:
        return PlatformQuotaExceededError(
            "platform answered 507 insufficient_storage: the identity's files and envelopes"
            f" may use at most {self.max_stored_bytes} bytes"
        )

    def count_send(self, sender: str) -> None:
        """One more envelope today, or the 429 quota_exceeded with its Retry-After."""
        now = self.clock()
        hour = int(now // HOUR)
        hours = [h for h in self._send_hours.get(sender, []) if h > hour - HOURS_PER_DAY]
        self._send_hours[sender] = hours
        if len(hours) >= self.envelopes_per_day:
            # The oldest hours must leave the day before one more fits.
            leaving = hours[len(hours) - self.envelopes_per_day]
            wait = (leaving + HOURS_PER_DAY) * HOUR - now
            raise PlatformQuotaExceededError(
                "platform answered 429 quota_exceeded: "
                f"at most {self.envelopes_per_day} envelopes a day may be sent",
                retry_after=float(max(1, math.ceil(wait))),
            )
        hours.append(hour)

    def put_envelope(self, sender: str, message_id: str, body: dict[str, Any]) -> None:
        canonical = _canonical(body)
        known = self.envelopes.get((sender, message_id))
        if known is not None:
            if known.canonical != canonical:
                raise _refused(
                    409,
                    "message_id_conflict",
                    "A different message was already accepted under this id.",
                )
            return  # the same answer again, nothing new
        recipients: list[str] = list(dict.fromkeys(body["recipients"]))
        unknown = [address for address in recipients if address not in self.identities]
        if unknown:
            raise PlatformRecipientNotFoundError(unknown, "Not registered: " + ", ".join(unknown))
        self.count_send(sender)
        envelope = _Envelope(sender, canonical)
        if self.usage(sender) + envelope.size + ROW_OVERHEAD > self.max_stored_bytes:
            raise self.storage_full()
        self.envelopes[(sender, message_id)] = envelope
        self.add_usage(sender, envelope.size + ROW_OVERHEAD)
        for address in recipients:
            self._append(address, envelope=envelope)

    def ack(self, address: str, cursor: int, receipts: list[_Receipt]) -> None:
        removed = [i for i in self._inbox if i.recipient == address and i.cursor <= cursor]
        acked: dict[str, set[str]] = {}
        for item in removed:
            if item.envelope is not None:
                message_id = json.loads(item.envelope.canonical)["id"]
                acked.setdefault(item.envelope.sender, set()).add(message_id)
        covered: dict[str, set[str]] = {}
        relayed: list[_Receipt] = []
        for receipt in receipts:
            ids = set(receipt.message_ids)
            done = covered.setdefault(receipt.sender, set())
            if (
                receipt.recipient == address
                and len(ids) == len(receipt.message_ids)
                and ids <= acked.get(receipt.sender, set())
                and ids.isdisjoint(done)
            ):
                done |= ids
                relayed.append(receipt)
        gone = {item.cursor for item in removed}
        self._inbox = [item for item in self._inbox if item.cursor not in gone]
        for receipt in relayed:
            self._append(receipt.sender, receipt_from=address, receipt=receipt.text)


@dataclass(frozen=True)
class _Receipt:
    sender: str
    recipient: str
    message_ids: tuple[str, ...]
    text: str


class _Download:
    def __init__(self, data: bytes, start: int = 0) -> None:
        self._data = data
        self._start = start

    @property
    def size(self) -> int:
        return len(self._data)

    async def iter_chunks(self, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        for start in range(self._start, len(self._data), chunk_size):
            yield self._data[start : start + chunk_size]
            await asyncio.sleep(0)


class DoubleClient:
    """One identity's view of a :class:`PlatformDouble`; a ``connector.platform.Platform``."""

    def __init__(self, platform: PlatformDouble) -> None:
        self._platform = platform
        self._address: str | None = None
        self._signer: Signer | None = None
        self._signed_in = False

    def set_identity(self, address: str, sign_challenge: Signer) -> None:
        self._address = address
        self._signer = sign_challenge
        self._signed_in = False

    def _caller(self, call: str) -> str:
        """Who we are, signed in as the real client signs in (a challenge, once)."""
        self._platform.reachable(call)
        if self._address is None or self._signer is None:
            raise RuntimeError("PlatformClient.set_identity() must be called first")
        if not self._signed_in:
            identity = self._platform.identities.get(self._address)
            if identity is None:
                raise PlatformIdentityNotFoundError()
            challenge = secrets.token_bytes(32)
            if not backbone_keys.verify_challenge(
                identity.signing_public, challenge, self._signer(challenge)
            ):
                raise _refused(401, "invalid_signature", "The challenge signature does not verify.")
            self._signed_in = True
        return self._address

    # identities

    async def register(self, signing_public: bytes, exchange_public: bytes, proof: bytes) -> str:
        platform = self._platform
        platform.reachable("register")
        if len(signing_public) != 32 or len(exchange_public) != 32 or len(proof) != 64:
            raise _refused(400, "invalid_request", "A key or the proof has the wrong length.")
        if not backbone_keys.valid_exchange_key(exchange_public):
            raise _refused(400, "invalid_request", "'exchangeKey' is not an X25519 public key.")
        if not backbone_keys.verify_registration(signing_public, exchange_public, proof):
            raise _refused(400, "invalid_proof", "The proof of possession does not verify.")
        address = backbone_keys.derive_address(signing_public)
        known = platform.identities.get(address)
        if known is not None and known.exchange_public != exchange_public:
            raise _refused(409, "identity_conflict", "This address has other keys.")
        if known is None or known.proof is None:
            platform.identities[address] = PeerIdentity(
                address, signing_public, exchange_public, proof
            )
        return address

    async def get_identity(self, address: str) -> PeerIdentity:
        self._platform.reachable("get_identity")
        identity = self._platform.identities.get(address)
        if identity is None:
            raise PlatformIdentityNotFoundError()
        return identity

    # files

    def _file_id(self, file_id: str) -> None:
        if not FILE_ID.fullmatch(file_id):
            raise _refused(400, "invalid_id", f"'{file_id}' does not match {FILE_ID.pattern}.")

    async def upload_file(
        self, file_id: str, body: AsyncIterable[bytes], size: int | None = None
    ) -> int:
        platform, caller = self._platform, self._caller("upload_file")
        self._file_id(file_id)
        too_large = PlatformFileTooLargeError(
            f"The file exceeds the limit of {platform.max_file_size} bytes."
        )
        if size is not None and size > platform.max_file_size:
            raise too_large
        record = platform.files.get(file_id)
        if record is not None:
            if record.deleted:
                raise _refused(410, "file_deleted", "This file id was deleted.")
            if record.owner != caller:
                raise _refused(409, "file_exists", "This file id belongs to another identity.")
            if record.data is not None:
                return len(record.data)  # complete already: the body is not read
        room = platform.max_stored_bytes - platform.usage(caller)
        room -= ROW_OVERHEAD if record is None else 0
        if room < 0 or (size is not None and size > room):
            raise platform.storage_full()
        if record is None:
            record = platform.files[file_id] = _File(caller)
            platform.add_usage(caller, ROW_OVERHEAD)
        data = bytearray()
        async for chunk in body:
            data += chunk
            if len(data) > platform.max_file_size:
                raise too_large
            if len(data) > room:
                raise platform.storage_full()
        if record.deleted:
            raise _refused(410, "file_deleted", "The file was deleted during the upload.")
        platform.add_usage(caller, len(data) - len(record.data or b""))
        record.data = bytes(data)
        return len(data)

    @asynccontextmanager
    async def download_file(self, file_id: str, start: int = 0) -> AsyncIterator[_Download]:
        self._caller("download_file")
        self._file_id(file_id)
        record = self._platform.files.get(file_id)
        if record is None or record.data is None:  # unknown, incomplete or deleted
            raise PlatformFileNotFoundError()
        yield _Download(record.data, start)

    async def delete_file(self, file_id: str) -> None:
        platform, caller = self._platform, self._caller("delete_file")
        self._file_id(file_id)
        record = platform.files.get(file_id)
        if record is None or record.deleted:
            return  # already gone is fine (the client swallows the 404)
        if record.owner != caller:
            raise _refused(403, "forbidden", "Only the owner may delete a file.")
        platform.add_usage(caller, -len(record.data or b""))
        record.data, record.deleted = None, True

    # messages and inbox

    async def send_message(self, envelope: Mapping[str, Any]) -> None:
        message_id = envelope.get("id")
        if not isinstance(message_id, str) or not message_id:
            raise ValueError("the envelope has no id")
        platform = self._platform
        raw = _wire(envelope)
        caller = self._caller("send_message")
        platform.puts.append(message_id)
        if not MESSAGE_ID.fullmatch(message_id):
            raise _refused(400, "invalid_id", f"'{message_id}' is not a message id.")
        if len(raw) > platform.max_envelope_bytes:
            raise _refused(
                413,
                "envelope_too_large",
                f"The envelope exceeds the limit of {platform.max_envelope_bytes} bytes.",
            )
        body = _checked_envelope(raw, message_id, platform.max_recipients)
        if body["sender"] != caller:
            raise _refused(403, "sender_mismatch", "The envelope's sender is not the caller.")
        platform.put_envelope(caller, message_id, body)

    async def fetch_inbox(self, after: int, limit: int = 100, wait: float = 0) -> InboxPage:
        platform, caller = self._platform, self._caller("fetch_inbox")
        if after < 0 or limit < 1:
            raise _refused(400, "invalid_request", "'after' and 'limit' must be positive.")
        limit = min(limit, MAX_LIMIT)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(wait, 0.0), MAX_WAIT)
        while True:
            woken = platform.watch(caller)
            items = platform.page(caller, after, limit)
            remaining = deadline - loop.time()
            if items or remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    await woken.wait()
            except TimeoutError:
                break
        cursor = items[-1].cursor if items else after
        return InboxPage(items=[item.as_item() for item in items], cursor=cursor)

    async def ack(self, cursor: int, receipts: Sequence[Mapping[str, Any]] = ()) -> None:
        platform = self._platform
        body: dict[str, Any] = {"cursor": cursor}
        if receipts:
            body["receipts"] = list(receipts)
        posted = json.loads(_wire(body)).get("receipts", [])
        platform.acks.append((self._address or "", cursor, posted))
        caller = self._caller("ack")
        if len(_wire(body)) > platform.max_request_bytes:
            raise _refused(413, "request_too_large", "The request body is too large.")
        if isinstance(cursor, bool) or not 0 <= cursor <= MAX_CURSOR:
            raise _refused(400, "invalid_request", f"'cursor' must be 0 to {MAX_CURSOR}.")
        if len(receipts) > platform.max_receipts:
            raise _refused(400, "invalid_request", f"At most {platform.max_receipts} receipts.")
        checked = [_checked_receipt(r, platform.max_receipt_bytes) for r in receipts]
        platform.ack(caller, cursor, checked)

    async def health(self) -> bool:
        try:
            self._platform.reachable("health")
        except PlatformUnavailableError:
            return False
        return True


def _invalid_envelope(detail: str) -> PlatformRejectedError:
    return _refused(400, "invalid_envelope", detail)


def _checked_envelope(raw: bytes, message_id: str, max_recipients: int) -> dict[str, Any]:
    """The envelope as the backbone reads it, or the 400 invalid_envelope it answers."""
    try:
        body = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
        _canonical(body).encode()  # lone surrogates cannot be stored
    except (ValueError, UnicodeEncodeError, RecursionError):
        raise _invalid_envelope("The body is not valid JSON.") from None
    if not isinstance(body, dict) or body.get("id") != message_id:
        raise _invalid_envelope("The envelope's 'id' differs from the id in the path.")
    if not _address_like(body.get("sender")):
        raise _invalid_envelope("'sender' must be an address.")
    for key, optional in (("createdAt", False), ("expiresAt", True)):
        value = body.get(key)
        if value is None and optional:
            continue
        try:
            if not isinstance(value, str):
                raise ValueError
            utc_timestamp(value)
        except ValueError:
            raise _invalid_envelope(f"'{key}' must be an ISO 8601 time with offset.") from None
    recipients = body.get("recipients")
    if not isinstance(recipients, list) or not recipients:
        raise _invalid_envelope("'recipients' must be a non-empty list of addresses.")
    if not all(_address_like(r) for r in recipients):
        raise _invalid_envelope("'recipients' must be a non-empty list of addresses.")
    if len(set(recipients)) > max_recipients:
        raise _invalid_envelope(f"At most {max_recipients} distinct recipients.")
    return body


def _checked_receipt(raw: object, max_bytes: int) -> _Receipt:
    def invalid(detail: str) -> PlatformRejectedError:
        return _refused(400, "invalid_request", detail)

    if not isinstance(raw, Mapping):
        raise invalid("Each receipt must be a JSON object.")
    text = _canonical(dict(raw))
    if len(text.encode()) > max_bytes:
        raise invalid(f"A receipt may be at most {max_bytes} bytes of JSON.")
    messages = raw.get("messages")
    if not isinstance(messages, list) or not 1 <= len(messages) <= MAX_LIMIT:
        raise invalid("A receipt's 'messages' must be a list of 1 to 1000 objects.")
    ids = [m.get("id") if isinstance(m, dict) else None for m in messages]
    if not all(isinstance(i, str) and MESSAGE_ID.fullmatch(i) for i in ids):
        raise invalid("Each of a receipt's 'messages' needs a message 'id'.")
    sender, recipient = raw.get("sender"), raw.get("recipient")
    if not (_address_like(sender) and _address_like(recipient)):
        raise invalid("A receipt's 'sender' and 'recipient' must be addresses.")
    assert isinstance(sender, str) and isinstance(recipient, str)
    return _Receipt(sender, recipient, tuple(str(i) for i in ids), text)


def _address_like(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_TEXT


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is out of range")
    return value
