"""Errors of the platform (backbone) client.

Every failure of a :class:`~connector.platform.client.PlatformClient` call is one of these; aiohttp
and socket exceptions are translated once, in :func:`map_exceptions`, and never leak. They never
leave the platform boundary either: services translate them into the domain tree
(:mod:`connector.errors`) in one place, :mod:`connector.services.platform_outcomes`, which also
classifies a send. So each class here is named ``Platform...Error``, and no domain error is:
a name means one thing.

    PlatformError                          (domain error it becomes, see platform_outcomes)
     ├── PlatformUnavailableError          PlatformUnavailable: transient: refused/reset
     │    │                                connection, timeout, 5xx, 408, 425, 429, a malformed
     │    │                                answer; ``retry_after`` when the platform said when
     │    │                                (Retry-After). The caller may retry later.
     │    └── PlatformQuotaExceededError   PlatformQuotaExceeded: 429 quota_exceeded, 507
     │                                     insufficient_storage: our identity's quota at the
     │                                     platform; it frees up with time or deletions
     └── PlatformRejectedError             PlatformUnavailable: permanent, a 4xx answer.
          │                                ``status``, ``code``, ``detail``.
          ├── PlatformRecipientNotFoundError  RecipientNotFound: 404 recipient_not_found;
          │                                   ``addresses`` lists the unknown ones
          ├── PlatformIdentityNotFoundError   RecipientNotFound: 404 identity_not_found
          ├── PlatformFileNotFoundError       FileNotFound: 404 file_not_found
          └── PlatformFileTooLargeError       FileTooLarge: 413 file_too_large
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp


class PlatformError(Exception):
    """The platform call failed."""


class PlatformUnavailableError(PlatformError):
    """The platform could not be reached or did not answer properly; try again later.

    ``retry_after`` is the number of seconds the platform asked us to wait (its ``Retry-After``
    header), or None when it did not say.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class PlatformQuotaExceededError(PlatformUnavailableError):
    """Our identity used up a quota of the platform (envelopes per day, stored bytes).

    Transient for a send (the outbox retries; the quota frees up), but worth telling apart for
    an upload: the user can free space, and waiting in the request would not help.
    """


class PlatformRejectedError(PlatformError):
    """The platform refused the request; repeating it unchanged will not help."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        super().__init__(f"{status} {code}: {detail}")


class PlatformRecipientNotFoundError(PlatformRejectedError):
    """Some recipients are not registered on the platform."""

    def __init__(self, addresses: list[str], detail: str = "") -> None:
        self.addresses = addresses
        super().__init__(
            404, "recipient_not_found", detail or "Not registered: " + ", ".join(addresses)
        )


class PlatformIdentityNotFoundError(PlatformRejectedError):
    """No identity is registered under this address."""

    def __init__(self, detail: str = "No identity is registered under this address.") -> None:
        super().__init__(404, "identity_not_found", detail)


class PlatformFileNotFoundError(PlatformRejectedError):
    """The platform holds no (complete) file under this id."""

    def __init__(self, detail: str = "No file is stored under this id.") -> None:
        super().__init__(404, "file_not_found", detail)


class PlatformFileTooLargeError(PlatformRejectedError):
    """The file exceeds the platform's size limit."""

    def __init__(self, detail: str = "The file exceeds the platform's size limit.") -> None:
        super().__init__(413, "file_too_large", detail)


@contextmanager
def map_exceptions() -> Iterator[None]:
    """Translate aiohttp, socket and timeout errors raised inside into PlatformUnavailableError."""
    try:
        yield
    except PlatformError:
        raise
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise PlatformUnavailableError(f"platform unreachable: {exc!r}") from exc
