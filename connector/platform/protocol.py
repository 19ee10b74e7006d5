"""What the services need of a platform: the calls they make, as a :class:`typing.Protocol`.

:class:`~connector.platform.client.PlatformClient` (the backbone over HTTP) is the one
implementation in the product; tests hand services an in-memory one
(``tests/doubles/platform.py``), and the same contract tests run against both
(``tests/contract``). Errors are those of :mod:`connector.platform.errors` either way.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from connector.platform.models import InboxPage, PeerIdentity

__all__ = ["Download", "Platform"]


class Download(Protocol):
    """An open download: the whole file's size is known up front, the bytes (from the start
    asked for) come in pieces."""

    @property
    def size(self) -> int: ...

    def iter_chunks(self, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]: ...


class Platform(Protocol):
    """The platform as one identity sees it (see docs/protocol.md for the semantics)."""

    async def register(self, signing_public: bytes, exchange_public: bytes, proof: bytes) -> str:
        """Register public keys with their proof of possession; answer the derived address."""
        ...

    async def get_identity(self, address: str) -> PeerIdentity: ...

    async def upload_file(
        self, file_id: str, body: AsyncIterable[bytes], size: int | None = None
    ) -> int:
        """Store ciphertext under ``file_id`` (idempotent for its owner); answer its size."""
        ...

    def download_file(self, file_id: str, start: int = 0) -> AbstractAsyncContextManager[Download]:
        """Open our or a sender's file; ``size`` is the whole file's, the bytes come from
        ``start`` on."""
        ...

    async def delete_file(self, file_id: str) -> None:
        """Delete our file; one that is already gone is fine."""
        ...

    async def send_message(self, envelope: Mapping[str, Any]) -> None:
        """Hand a sealed envelope over (idempotent under its id)."""
        ...

    async def fetch_inbox(self, after: int, limit: int = 100, wait: float = 0) -> InboxPage:
        """Items after ``after``, oldest first; with none, wait up to ``wait`` s for one."""
        ...

    async def ack(self, cursor: int, receipts: Sequence[Mapping[str, Any]] = ()) -> None:
        """Remove every item up to ``cursor``; relay ``receipts`` for messages removed."""
        ...

    async def health(self) -> bool: ...
