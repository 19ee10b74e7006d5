"""Errors of the platform (backbone) client.

Every failure of a :class:`~connector.platform.client.PlatformClient` call is one of these; aiohttp
and socket exceptions are translated once, in :func:`map_exceptions`, and never leak.

    PlatformError
     ├── PlatformUnavailable        transient: refused/reset connection, timeout, 5xx, 408, 429,
     │    │                         a malformed answer. The caller may retry later.
     │    └── PlatformQuotaExceeded 429 quota_exceeded, 507 insufficient_storage: our identity's
     │                              quota at the platform; it frees up with time or deletions
     └── PlatformRejected           permanent: a 4xx answer. ``status``, ``code``, ``detail``.
          ├── RecipientNotFound     404 recipient_not_found; ``addresses`` lists the unknown ones
          ├── IdentityNotFound      404 identity_not_found
          ├── PlatformFileNotFound  404 file_not_found
          └── PlatformFileTooLarge  413 file_too_large
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp


class PlatformError(Exception):
    """The platform call failed."""


class PlatformUnavailable(PlatformError):
    """The platform could not be reached or did not answer properly; try again later."""


class PlatformQuotaExceeded(PlatformUnavailable):
    """Our identity used up a quota of the platform (envelopes per day, stored bytes).

    Transient for a send (the outbox retries; the quota frees up), but worth telling apart for
    an upload: the user can free space, and waiting in the request would not help.
    """


class PlatformRejected(PlatformError):
    """The platform refused the request; repeating it unchanged will not help."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        super().__init__(f"{status} {code}: {detail}")


class RecipientNotFound(PlatformRejected):
    """Some recipients are not registered on the platform."""

    def __init__(self, addresses: list[str], detail: str = "") -> None:
        self.addresses = addresses
        super().__init__(
            404, "recipient_not_found", detail or "Not registered: " + ", ".join(addresses)
        )


class IdentityNotFound(PlatformRejected):
    """No identity is registered under this address."""

    def __init__(self, detail: str = "No identity is registered under this address.") -> None:
        super().__init__(404, "identity_not_found", detail)


class PlatformFileNotFound(PlatformRejected):
    """The platform holds no (complete) file under this id."""

    def __init__(self, detail: str = "No file is stored under this id.") -> None:
        super().__init__(404, "file_not_found", detail)


class PlatformFileTooLarge(PlatformRejected):
    """The file exceeds the platform's size limit."""

    def __init__(self, detail: str = "The file exceeds the platform's size limit.") -> None:
        super().__init__(413, "file_too_large", detail)


@contextmanager
def map_exceptions() -> Iterator[None]:
    """Translate aiohttp, socket and timeout errors raised inside into PlatformUnavailable."""
    try:
        yield
    except PlatformError:
        raise
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise PlatformUnavailable(f"platform unreachable: {exc!r}") from exc
