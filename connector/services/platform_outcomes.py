"""Where platform client errors become domain errors, and what a send attempt came to.

Services call the platform client and must answer in the domain's terms (``connector.errors``):
a status and a code the API can show, or a decision for the outbox. Both are made here and
nowhere else, as httpx maps httpcore's exceptions in one context manager, so that the same
platform answer means the same thing in every service and a new platform error is handled by
adding one line to one table. No other module catches a ``connector.platform.errors`` class.

:func:`platform_errors` translates, for calls whose failure the caller reports or logs. A
call names the refusals it expects (``expect``), each with the domain error it means; every
other failure, a refusal nobody expects included, is the platform failing us:

=================================== ========================================================
platform client raised               domain error, when the call expects it
=================================== ========================================================
``PlatformRecipientNotFoundError``   ``RecipientNotFound`` 404, ``recipients`` = its addresses
``PlatformIdentityNotFoundError``    ``RecipientNotFound`` 404
``PlatformFileNotFoundError``        ``FileNotFound`` 404
``PlatformFileTooLargeError``        ``FileTooLarge`` 413
``PlatformQuotaExceededError``       ``PlatformQuotaExceeded`` 507
anything else (``PlatformError``)    ``PlatformUnavailable`` 503, always
=================================== ========================================================

So a page of the inbox that the platform answers with a 404 is still "the platform is
unavailable" (503), not a missing recipient, while the same 404 to a key lookup means the
address is unknown. The detail is ``<what failed>: <the platform's reason>`` unless the call
words it.

:func:`attempt_send` hands one envelope to the platform and classifies the outcome as
:class:`Sent`, :class:`TryAgain` (transient: unreachable, timed out, 5xx, 429, a quota; with the
``Retry-After`` the platform gave, if any) or :class:`Refused` (permanent: a 4xx refusal,
unknown recipients among them). The send during a request and the outbox both use it, so a
message's fate does not depend on which of them tried.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from connector.errors import (
    ConnectorError,
    FileNotFound,
    FileTooLarge,
    PlatformQuotaExceeded,
    PlatformUnavailable,
    RecipientNotFound,
)
from connector.platform.errors import (
    PlatformError,
    PlatformFileNotFoundError,
    PlatformFileTooLargeError,
    PlatformIdentityNotFoundError,
    PlatformQuotaExceededError,
    PlatformRecipientNotFoundError,
    PlatformRejectedError,
    PlatformUnavailableError,
)
from connector.platform.protocol import Platform

log = logging.getLogger(__name__)

__all__ = [
    "Refused",
    "SendOutcome",
    "Sent",
    "TryAgain",
    "attempt_send",
    "classify_send",
    "domain_error",
    "error_kind",
    "platform_errors",
    "seal_each",
]

Expected = Mapping[type[ConnectorError], str | None]
"""Domain errors a call expects, each with its wording (``{reason}``: the platform's) or None."""

_MEANINGS: tuple[tuple[type[PlatformError], type[ConnectorError]], ...] = (
    (PlatformRecipientNotFoundError, RecipientNotFound),
    (PlatformIdentityNotFoundError, RecipientNotFound),
    (PlatformFileNotFoundError, FileNotFound),
    (PlatformFileTooLargeError, FileTooLarge),
    (PlatformQuotaExceededError, PlatformQuotaExceeded),
)
"""The table of the module docstring; anything not in it is PlatformUnavailable."""


def domain_error(exc: PlatformError, failed: str, expect: Expected | None = None) -> ConnectorError:
    """The domain error ``exc`` means to a call that says ``failed`` and expects ``expect``."""
    reason = str(exc)
    kind = next((domain for platform, domain in _MEANINGS if isinstance(exc, platform)), None)
    if kind is None or expect is None or kind not in expect:
        return PlatformUnavailable(f"{failed}: {reason}")
    wording = expect[kind]
    detail = f"{failed}: {reason}" if wording is None else wording.replace("{reason}", reason)
    if isinstance(exc, PlatformRecipientNotFoundError):
        return RecipientNotFound(detail, recipients=exc.addresses)
    return kind(detail)


_KINDS: tuple[tuple[type[PlatformError], str], ...] = (
    (PlatformQuotaExceededError, "quota_exceeded"),
    (PlatformUnavailableError, "unavailable"),
    (PlatformRecipientNotFoundError, "recipient_not_found"),
    (PlatformIdentityNotFoundError, "identity_not_found"),
    (PlatformFileNotFoundError, "file_not_found"),
    (PlatformFileTooLargeError, "file_too_large"),
    (PlatformRejectedError, "rejected"),
)
"""Most specific first: the kinds of platform error a metric tells apart (a fixed few)."""


def error_kind(exc: PlatformError) -> str:
    """The kind of ``exc`` for metrics: ``unavailable``, ``quota_exceeded``, ``rejected`` or
    the refusal that the table above gives a meaning (``recipient_not_found``, ...)."""
    return next((kind for cls, kind in _KINDS if isinstance(exc, cls)), "other")


@contextmanager
def platform_errors(failed: str, expect: Expected | None = None) -> Iterator[None]:
    """Raise the domain error for a platform client error raised inside (see the table).

    ``failed`` says what failed ("file upload failed"), ``expect`` which refusals mean more
    than "the platform is unavailable" to this call.
    """
    try:
        yield
    except PlatformError as exc:
        raise domain_error(exc, failed, expect) from exc


# -- a send attempt ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sent:
    """The platform took the envelope."""


@dataclass(frozen=True, slots=True)
class TryAgain:
    """Not now: the platform could not be reached or asked us to come back later."""

    error: str
    retry_after: float | None = None
    """Seconds the platform asked us to wait (``Retry-After``), when it said."""


@dataclass(frozen=True, slots=True)
class Refused:
    """The platform refused the envelope for good; sending it again cannot help."""

    error: str
    """Why, as recorded on the message."""
    unknown_recipients: RecipientNotFound | None = None
    """The domain error for a caller still waiting, when the refusal is unknown recipients."""


SendOutcome = Sent | TryAgain | Refused

SENT = Sent()


def classify_send(exc: PlatformError | TimeoutError | None) -> SendOutcome:
    """What a send attempt came to that raised ``exc`` (None: the platform took it)."""
    if exc is None:
        return SENT
    if isinstance(exc, PlatformRecipientNotFoundError):
        unknown = domain_error(exc, "send", {RecipientNotFound: "{reason}"})
        assert isinstance(unknown, RecipientNotFound)
        return Refused(f"recipient not found: {exc}", unknown)
    if isinstance(exc, PlatformRejectedError):
        return Refused(f"platform refused the message: {exc}")
    if isinstance(exc, PlatformUnavailableError):
        return TryAgain(str(exc), exc.retry_after)
    if isinstance(exc, TimeoutError):  # the caller's own deadline for the attempt
        return TryAgain("the platform did not answer in time")
    return TryAgain(str(exc))


async def attempt_send(
    platform: Platform, envelope: Mapping[str, Any], *, within: float | None = None
) -> SendOutcome:
    """Hand ``envelope`` to the platform once; past ``within`` seconds that is a :class:`TryAgain`.

    The bound is part of the attempt (a request waits only so long before it answers 202), so
    running out of it is an outcome to classify, not an error for the caller.
    """
    try:
        async with asyncio.timeout(within):
            await platform.send_message(envelope)
    except (PlatformError, TimeoutError) as exc:
        return classify_send(exc)
    return SENT


async def seal_each(
    sealings: Iterable[tuple[int, Awaitable[dict[str, Any]], str]], *, unknown: str
) -> tuple[dict[int, dict[str, Any]], dict[int, SendOutcome]]:
    """Seal one item after another: ``(key, sealing, what)`` each, where ``what`` names the
    item in the log. The envelopes made, and for each item that could not be sealed the
    outcome that stands for its send.

    Sealing looks the recipients' keys up at the platform, so it fails the ways a send does:
    an unknown recipient is refused for good (``unknown`` says who that is, for the record);
    an unreachable platform, a peer key that does not check out or any other error is tried
    again later, and one item that cannot be sealed never holds up the rest. Give the
    sealings as a generator, so that each starts only when its turn comes; requests are
    served between two seals.
    """
    sealed: dict[int, dict[str, Any]] = {}
    failed: dict[int, SendOutcome] = {}
    for key, sealing, what in sealings:
        try:
            sealed[key] = await sealing
        except RecipientNotFound as exc:
            failed[key] = Refused(f"{unknown}: {exc.detail}")
        except PlatformUnavailable as exc:
            failed[key] = TryAgain(exc.detail)
        except ConnectorError as exc:  # peer_key_invalid: nothing is sealed to that key
            log.warning("cannot seal %s: %s", what, exc.detail)
            failed[key] = TryAgain(f"{exc.code}: {exc.detail}")
        except Exception as exc:
            log.exception("cannot seal %s", what)
            failed[key] = TryAgain(f"cannot seal: {exc!r}")
        await asyncio.sleep(0)
    return sealed, failed
