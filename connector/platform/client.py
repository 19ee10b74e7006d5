"""Client of the platform (backbone) protocol; the wire format is described in docs/protocol.md.

One :class:`PlatformClient` per identity. It owns no connection pool: the caller passes its
``aiohttp.ClientSession`` (and closes it). Authentication is automatic once :meth:`set_identity`
was called: a bearer token is fetched on first use, renewed shortly before it expires, and
fetched again (once) when the platform answers 401; concurrent callers share one renewal.
A failed call is told to ``on_error`` (the connector's metrics) with its operation's name.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import io
import json
import re
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Concatenate, ParamSpec, TypeVar

import aiohttp
from yarl import URL

from connector.clock import retry_after_seconds, utcnow
from connector.platform.errors import (
    PlatformError,
    PlatformFileNotFoundError,
    PlatformFileTooLargeError,
    PlatformIdentityNotFoundError,
    PlatformQuotaExceededError,
    PlatformRecipientNotFoundError,
    PlatformRejectedError,
    PlatformUnavailableError,
    map_exceptions,
)
from connector.platform.models import InboxItem, InboxPage, PeerIdentity

__all__ = ["PlatformClient", "PlatformDownload"]

Signer = Callable[[bytes], bytes]
ErrorObserver = Callable[[str, PlatformError], None]
"""Told of each failed call: the operation (``send_message``, ...) and the error raised."""
T = TypeVar("T")
P = ParamSpec("P")
C = TypeVar("C", bound="PlatformClient")

_JSON = {"Content-Type": "application/json"}
# Renew a token this long before it expires (at most a tenth of its lifetime).
_RENEW_MARGIN = 60.0
_TRANSIENT_4XX = frozenset({408, 425, 429})
_QUOTA_CODES = frozenset({"quota_exceeded", "insufficient_storage"})
_INLINE_BODY_LIMIT = 512 * 1024
# The platform bounds its pages at 8 MiB; a little more is allowed for JSON framing.
DEFAULT_MAX_PAGE_BYTES = 9 * 1024 * 1024


class PlatformDownload:
    """An open download: the file's size is known up front, the bytes are streamed.

    ``iter_chunks`` yields the bytes from ``start`` on: the platform sent only those (206), or
    it ignored the range (200) and the bytes before ``start`` are skipped as they arrive.
    """

    def __init__(
        self, response: aiohttp.ClientResponse, size: int, *, start: int = 0, skip: int = 0
    ) -> None:
        self._response = response
        self.size = size
        self._start = start
        self._skip = skip

    async def iter_chunks(self, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """Yield the file's bytes from ``start`` in pieces of at most ``chunk_size``."""
        received = self._start - self._skip
        skip = self._skip
        with map_exceptions():
            async for chunk in self._response.content.iter_chunked(chunk_size):
                received += len(chunk)
                if skip:
                    dropped = min(skip, len(chunk))
                    skip -= dropped
                    chunk = chunk[dropped:]
                    if not chunk:
                        continue
                yield chunk
        if received != self.size:
            raise PlatformUnavailableError(f"download ended after {received} of {self.size} bytes")


def _observed(
    operation: str,
) -> Callable[
    [Callable[Concatenate[C, P], Coroutine[Any, Any, T]]],
    Callable[Concatenate[C, P], Coroutine[Any, Any, T]],
]:
    """Tell the client's ``on_error`` of a :class:`PlatformError` the method raises."""

    def decorate(
        method: Callable[Concatenate[C, P], Coroutine[Any, Any, T]],
    ) -> Callable[Concatenate[C, P], Coroutine[Any, Any, T]]:
        @functools.wraps(method)
        async def observed(client: C, /, *args: P.args, **kwargs: P.kwargs) -> T:
            with client.observing(operation):
                return await method(client, *args, **kwargs)

        return observed

    return decorate


def _range_total(response: aiohttp.ClientResponse, start: int) -> int:
    """The whole file's size from a 206's ``Content-Range: bytes START-END/TOTAL``."""
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", response.headers.get("Content-Range", ""))
    if match is None or int(match.group(1)) != start or response.content_length is None:
        raise PlatformUnavailableError("the platform answered a range without a matching range")
    total = int(match.group(3))
    if int(match.group(2)) + 1 != total or response.content_length != total - start:
        raise PlatformUnavailableError("the platform answered another range than asked for")
    return total


class PlatformClient:
    def __init__(
        self,
        base_url: str,
        session: aiohttp.ClientSession,
        *,
        request_timeout: float = 10.0,
        max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES,
        on_error: ErrorObserver | None = None,
    ) -> None:
        self._on_error = on_error
        self._base = URL(base_url.rstrip("/"))
        # The platform is not trusted: an inbox answer longer than this is refused unread.
        self._max_page_bytes = max_page_bytes
        self._session = session
        self._request_timeout = request_timeout
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        # Streams may take as long as they need, as long as bytes keep moving. Uploads watch
        # their own progress (see _Progress); downloads rely on the socket read timeout.
        self._upload_timeout = aiohttp.ClientTimeout(total=None, sock_connect=request_timeout)
        self._download_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=request_timeout, sock_read=request_timeout
        )
        self._address: str | None = None
        self._signer: Signer | None = None
        self._token: str | None = None
        self._renew_at = 0.0  # time.monotonic() after which the token is renewed
        self._token_lock = asyncio.Lock()

    @contextmanager
    def observing(self, operation: str) -> Iterator[None]:
        """Tell ``on_error`` of a :class:`PlatformError` raised inside, a failed ``operation``."""
        try:
            yield
        except PlatformError as exc:
            if self._on_error is not None:
                self._on_error(operation, exc)
            raise

    # identity and auth

    def set_identity(self, address: str, sign_challenge: Signer) -> None:
        """Act as ``address``; ``sign_challenge`` signs a raw challenge (context included)."""
        self._address = address
        self._signer = sign_challenge
        self._token = None

    @_observed("register")
    async def register(self, signing_public: bytes, exchange_public: bytes, proof: bytes) -> str:
        """Register public keys with their proof of possession; answer the derived address."""
        body = {
            "signingKey": _b64(signing_public),
            "exchangeKey": _b64(exchange_public),
            "proof": _b64(proof),
        }
        answer = await self._json("POST", ("identities",), body=body, auth=False)
        return _field(answer, "address", str)

    @_observed("get_identity")
    async def get_identity(self, address: str) -> PeerIdentity:
        answer = await self._json("GET", ("identities", address), auth=False)
        try:
            return PeerIdentity(
                address=_field(answer, "address", str),
                signing_public=base64.b64decode(_field(answer, "signingKey", str), validate=True),
                exchange_public=base64.b64decode(_field(answer, "exchangeKey", str), validate=True),
                proof=_optional_b64(answer.get("proof")),
            )
        except binascii.Error as exc:
            raise PlatformUnavailableError(f"malformed identity from the platform: {exc}") from exc

    async def _bearer(self) -> str:
        token = self._token
        if token is not None and time.monotonic() < self._renew_at:
            return token
        async with self._token_lock:
            if self._token is None or time.monotonic() >= self._renew_at:
                self._token = await self._fetch_token()
            return self._token

    def _drop_token(self, token: str) -> None:
        """Forget a token the platform refused (unless someone already replaced it)."""
        if self._token == token:
            self._token = None

    async def _fetch_token(self) -> str:
        if self._address is None or self._signer is None:
            raise RuntimeError("PlatformClient.set_identity() must be called first")
        issued = await self._json(
            "POST", ("auth", "challenge"), body={"address": self._address}, auth=False
        )
        try:
            challenge = base64.b64decode(_field(issued, "challenge", str), validate=True)
        except binascii.Error as exc:
            raise PlatformUnavailableError(f"malformed challenge from the platform: {exc}") from exc
        body = {
            "address": self._address,
            "challenge": _b64(challenge),
            "signature": _b64(self._signer(challenge)),
        }
        url = self._url(("auth", "token"))
        with map_exceptions():
            async with self._session.post(
                url, data=_dumps(body), headers=_JSON, timeout=self._timeout
            ) as response:
                answer = await _answer(response)
                server_now = _server_time(response)
        token = _field(answer, "token", str)
        lifetime = _lifetime(_field(answer, "expiresAt", str), server_now)
        self._renew_at = time.monotonic() + lifetime - min(_RENEW_MARGIN, lifetime / 10)
        return token

    # the request core

    def _url(self, path: tuple[str, ...]) -> URL:
        url = self._base / "v1"
        for segment in path:
            url = url / segment
        return url

    async def _json(
        self,
        method: str,
        path: tuple[str, ...],
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        auth: bool = True,
        client_timeout: aiohttp.ClientTimeout | None = None,
        max_bytes: int | None = None,
    ) -> Any:
        """One JSON call; a 401 is answered by a fresh token and one more try.

        With ``max_bytes`` a successful answer longer than that fails with PlatformUnavailableError
        as soon as it is known to be (from Content-Length, or once that much was read).
        """
        url = self._url(path)
        data = None if body is None else _dumps(body)
        headers = _JSON if body is not None else {}
        for attempt in (1, 2):
            token = await self._bearer() if auth else None
            call_headers = dict(headers)
            if token is not None:
                call_headers["Authorization"] = f"Bearer {token}"
            with map_exceptions():
                async with self._session.request(
                    method,
                    url,
                    data=_payload(data),
                    params=params,
                    headers=call_headers,
                    timeout=client_timeout or self._timeout,
                ) as response:
                    if response.status == 401 and token is not None and attempt == 1:
                        self._drop_token(token)
                        continue
                    return await _answer(response, max_bytes)
        raise AssertionError("unreachable")

    # files

    @_observed("upload_file")
    async def upload_file(
        self, file_id: str, body: AsyncIterable[bytes], size: int | None = None
    ) -> int:
        """Stream ciphertext to the platform under ``file_id``; answer the stored size.

        Sends ``Expect: 100-continue``, so a refusal (size, owner, auth) or an upload that is
        already complete costs no body transfer; a refused token is renewed and the upload
        retried as long as no byte of ``body`` was consumed. There is no limit on the total
        duration, only on silence: ``request_timeout`` without progress fails the upload.
        An exception raised by ``body`` itself propagates unchanged.
        """
        url = self._url(("files", file_id))
        progress = _Progress(body)
        headers = {"Content-Type": "application/octet-stream"}
        if size is not None:
            headers["Content-Length"] = str(size)
        for attempt in (1, 2):
            token = await self._bearer()
            try:
                with map_exceptions():
                    async with asyncio.timeout(None) as idle:
                        progress.watch(idle, self._request_timeout)
                        async with self._session.put(
                            url,
                            data=progress.chunks(),
                            headers={**headers, "Authorization": f"Bearer {token}"},
                            expect100=True,
                            timeout=self._upload_timeout,
                        ) as response:
                            if response.status == 401 and attempt == 1 and not progress.started:
                                self._drop_token(token)
                                continue
                            answer = await _answer(response)
            except PlatformUnavailableError:
                if progress.error is not None:  # our body failed, not the platform
                    raise progress.error from None
                raise
            return _field(answer, "size", int)
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def download_file(self, file_id: str, start: int = 0) -> AsyncIterator[PlatformDownload]:
        """Open a download: ``async with client.download_file(id) as d:`` then ``d.size`` and
        ``d.iter_chunks()``; with ``start``, the bytes from there on (an HTTP range). The
        response is released when the block ends."""
        url = self._url(("files", file_id))
        for attempt in (1, 2):
            with self.observing("download_file"):
                token = await self._bearer()
            headers = {"Authorization": f"Bearer {token}"}
            if start:
                headers["Range"] = f"bytes={start}-"
            with self.observing("download_file"), map_exceptions():
                response = await self._session.get(
                    url, headers=headers, timeout=self._download_timeout
                )
            try:
                if response.status == 401 and attempt == 1:
                    self._drop_token(token)
                    continue
                ranged = response.status == 206 and start > 0
                with self.observing("download_file"):
                    if ranged:
                        size = _range_total(response, start)
                    else:
                        if response.status != 200:
                            with map_exceptions():
                                await _answer(response)
                            raise PlatformUnavailableError(f"unexpected status {response.status}")
                        if response.content_length is None:
                            raise PlatformUnavailableError(
                                "the platform sent a file without Content-Length"
                            )
                        size = response.content_length
                # a platform that ignored the range sent it all: the bytes before start are
                # skipped on the way
                yield PlatformDownload(response, size, start=start, skip=0 if ranged else start)
                return
            finally:
                response.release()
        raise AssertionError("unreachable")

    @_observed("delete_file")
    async def delete_file(self, file_id: str) -> None:
        """Delete our file from the platform; a file that is already gone is fine."""
        try:
            await self._json("DELETE", ("files", file_id))
        except PlatformFileNotFoundError:
            pass

    # messages and inbox

    @_observed("send_message")
    async def send_message(self, envelope: Mapping[str, Any]) -> None:
        """Hand a sealed envelope to the platform (idempotent under its id)."""
        message_id = envelope.get("id")
        if not isinstance(message_id, str) or not message_id:
            raise ValueError("the envelope has no id")
        await self._json("PUT", ("messages", message_id), body=envelope)

    @_observed("fetch_inbox")
    async def fetch_inbox(self, after: int, limit: int = 100, wait: float = 0) -> InboxPage:
        """Items after ``after``, oldest first; with none, wait up to ``wait`` s for one."""
        params = {"after": str(after), "limit": str(limit)}
        if wait > 0:
            params["wait"] = f"{wait:g}"
        answer = await self._json(
            "GET",
            ("inbox",),
            params=params,
            client_timeout=aiohttp.ClientTimeout(total=wait + self._request_timeout),
            max_bytes=self._max_page_bytes,
        )
        items = [_inbox_item(raw) for raw in _field(answer, "items", list)]
        return InboxPage(items=items, cursor=_field(answer, "cursor", int))

    @_observed("ack")
    async def ack(self, cursor: int, receipts: Sequence[Mapping[str, Any]] = ()) -> None:
        """Acknowledge every item up to ``cursor`` (they are then gone from the inbox).

        ``receipts`` are signed receipts for the acknowledged messages; the platform relays each
        to its message's sender.
        """
        body: dict[str, Any] = {"cursor": cursor}
        if receipts:
            body["receipts"] = list(receipts)
        await self._json("POST", ("inbox", "ack"), body=body)

    async def health(self) -> bool:
        """True when the platform answers its health check."""
        try:
            answer = await self._json("GET", ("health",), auth=False)
        except PlatformError as exc:
            if self._on_error is not None:
                self._on_error("health", exc)
            return False
        return isinstance(answer, dict) and answer.get("status") == "ok"


class _Progress:
    """Wraps an upload body: notes whether it was touched and pushes the idle deadline."""

    def __init__(self, body: AsyncIterable[bytes]) -> None:
        self._body = body
        self.started = False
        self.error: Exception | None = None
        self._idle: asyncio.Timeout | None = None
        self._limit = 0.0

    def watch(self, idle: asyncio.Timeout, limit: float) -> None:
        self._idle = idle
        self._limit = limit
        self._push()

    def _push(self) -> None:
        """The platform must make progress within the limit from now on."""
        if self._idle is not None:
            self._idle.reschedule(asyncio.get_running_loop().time() + self._limit)

    def _pause(self) -> None:
        """Waiting for our own source is not the platform's fault: no deadline meanwhile."""
        if self._idle is not None:
            self._idle.reschedule(None)

    async def chunks(self) -> AsyncIterator[bytes]:
        self.started = True
        source = aiter(self._body)
        while True:
            self._pause()
            try:
                chunk = await anext(source)
            except StopAsyncIteration:
                break
            except Exception as exc:
                self.error = exc
                raise
            self._push()
            yield chunk
        self._push()  # from here on the limit covers waiting for the answer


def _payload(data: bytes | None) -> bytes | io.BytesIO | None:
    """aiohttp wants large bodies as a file-like object (it warns about big raw bytes)."""
    if data is not None and len(data) > _INLINE_BODY_LIMIT:
        return io.BytesIO(data)
    return data


def _optional_b64(value: object) -> bytes | None:
    """A base64 member that may be absent; anything but a string is treated as absent."""
    if not isinstance(value, str):
        return None
    return base64.b64decode(value, validate=True)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _dumps(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def _field(answer: Any, key: str, kind: type[T]) -> T:
    value = answer.get(key) if isinstance(answer, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise PlatformUnavailableError(f"the platform's answer lacks a valid '{key}'")
    return value


def _inbox_item(raw: object) -> InboxItem:
    """One page item. Without an int cursor the page is unusable (PlatformUnavailableError); with
    one, anything else wrong yields an ``invalid`` item, so one bad item never stalls a sync."""
    if not isinstance(raw, dict):
        raise PlatformUnavailableError(
            "malformed inbox page from the platform: an item is no object"
        )
    cursor = raw.get("cursor")
    if not isinstance(cursor, int) or isinstance(cursor, bool):
        raise PlatformUnavailableError(
            "malformed inbox page from the platform: an item has no cursor"
        )
    try:
        return _typed_item(cursor, raw)
    except _BadItem as exc:
        return InboxItem(cursor=cursor, type="invalid", error=str(exc))


class _BadItem(Exception):
    """An inbox item that is not what the protocol describes."""


def _typed_item(cursor: int, raw: dict[str, Any]) -> InboxItem:
    kind = raw.get("type")
    if kind == "message":
        envelope = raw.get("envelope")
        if not isinstance(envelope, dict):
            raise _BadItem("message item without an envelope object")
        message_id = envelope.get("id")
        return InboxItem(
            cursor=cursor,
            type="message",
            envelope=envelope,
            message_id=message_id if isinstance(message_id, str) else None,
        )
    if kind == "receipt":
        receipt, recipient = raw.get("receipt"), raw.get("recipient")
        if not isinstance(receipt, dict):
            raise _BadItem("receipt item without a receipt object")
        if not isinstance(recipient, str):
            raise _BadItem("receipt item without a recipient")
        return InboxItem(cursor=cursor, type="receipt", recipient=recipient, receipt=receipt)
    raise _BadItem(f"unknown inbox item type {str(kind)[:40]!r}")


async def _answer(response: aiohttp.ClientResponse, max_bytes: int | None = None) -> Any:
    """The JSON answer of a 2xx response (None when empty); the matching error otherwise.

    With ``max_bytes`` a 2xx body is read only up to that many bytes (see :func:`_read_bounded`).
    """
    if max_bytes is not None and 200 <= response.status < 300:
        raw = await _read_bounded(response, max_bytes)
    else:
        raw = await response.read()
    if 200 <= response.status < 300:
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise PlatformUnavailableError(f"the platform sent malformed JSON: {exc}") from exc
    raise _error(response.status, raw, response.headers.get("Retry-After"))


async def _read_bounded(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The body, or PlatformUnavailableError once it is known to exceed ``max_bytes``.

    The connection is closed then, so the rest is never read into memory.
    """
    length = response.content_length
    if length is not None and length > max_bytes:
        response.close()
        raise PlatformUnavailableError(
            f"the platform's answer of {length} bytes exceeds {max_bytes}"
        )
    parts: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > max_bytes:
            response.close()
            raise PlatformUnavailableError(f"the platform's answer exceeds {max_bytes} bytes")
        parts.append(chunk)
    return b"".join(parts)


def _error(status: int, raw: bytes, retry_after: str | None = None) -> PlatformError:
    try:
        problem = json.loads(raw)
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        problem = {}
    code = str(problem.get("code") or f"http_{status}")
    detail = str(problem.get("detail") or raw[:200].decode("utf-8", "replace"))
    if code in _QUOTA_CODES:
        return PlatformQuotaExceededError(
            f"platform answered {status} {code}: {detail}", retry_after=_delay(retry_after)
        )
    if status >= 500 or status in _TRANSIENT_4XX:
        return PlatformUnavailableError(
            f"platform answered {status} {code}: {detail}", retry_after=_delay(retry_after)
        )
    if code == "recipient_not_found":
        addresses = problem.get("recipients")
        unknown = [str(a) for a in addresses] if isinstance(addresses, list) else []
        return PlatformRecipientNotFoundError(unknown, detail)
    if code == "identity_not_found":
        return PlatformIdentityNotFoundError(detail)
    if code == "file_not_found":
        return PlatformFileNotFoundError(detail)
    if status == 413 and code == "file_too_large":
        return PlatformFileTooLargeError(detail)
    return PlatformRejectedError(status, code, detail)


_MAX_RETRY_AFTER = 7 * 24 * 3600.0
"""The platform is not trusted with our schedule: a ``Retry-After`` waits at most a week."""


def _delay(retry_after: str | None) -> float | None:
    return retry_after_seconds(retry_after, now=utcnow(), cap=_MAX_RETRY_AFTER)


def _server_time(response: aiohttp.ClientResponse) -> datetime | None:
    date = response.headers.get("Date")
    if date is None:
        return None
    try:
        return parsedate_to_datetime(date)
    except (TypeError, ValueError):
        return None


def _lifetime(expires_at: str, server_now: datetime | None) -> float:
    """Seconds the token surely stays valid, on the platform's clock when it tells it.

    ``Date`` has whole seconds and is rounded down, so one second is taken off to stay safe.
    """
    try:
        expiry = datetime.fromisoformat(expires_at)
    except ValueError as exc:
        raise PlatformUnavailableError(f"malformed token expiry {expires_at!r}") from exc
    if expiry.tzinfo is None:
        expiry = expiry.replace(tzinfo=UTC)
    if server_now is None:
        remaining = (expiry - datetime.now(expiry.tzinfo)).total_seconds()
    else:
        remaining = (expiry - server_now).total_seconds() - 1.0
    return max(0.0, remaining)
