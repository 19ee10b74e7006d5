"""The one translation of platform errors into domain errors, and the one send classification."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

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
from connector.services.platform_outcomes import (
    Refused,
    Sent,
    TryAgain,
    attempt_send,
    classify_send,
    domain_error,
    platform_errors,
)

EVERY_DOMAIN_MEANING: dict[type[ConnectorError], str | None] = {
    RecipientNotFound: None,
    FileNotFound: None,
    FileTooLarge: None,
    PlatformQuotaExceeded: None,
}

MEANINGS: list[tuple[PlatformError, type[ConnectorError], int, str]] = [
    (PlatformRecipientNotFoundError(["id1a"]), RecipientNotFound, 404, "recipient_not_found"),
    (PlatformIdentityNotFoundError(), RecipientNotFound, 404, "recipient_not_found"),
    (PlatformFileNotFoundError(), FileNotFound, 404, "file_not_found"),
    (PlatformFileTooLargeError(), FileTooLarge, 413, "file_too_large"),
    (
        PlatformQuotaExceededError("507 insufficient_storage"),
        PlatformQuotaExceeded,
        507,
        "platform_quota_exceeded",
    ),
    (PlatformUnavailableError("refused"), PlatformUnavailable, 503, "platform_unavailable"),
    (
        PlatformRejectedError(400, "invalid_request", "bad"),
        PlatformUnavailable,
        503,
        "platform_unavailable",
    ),
]


@pytest.mark.parametrize(("exc", "kind", "status", "code"), MEANINGS)
def test_an_expected_refusal_becomes_its_domain_error(
    exc: PlatformError, kind: type[ConnectorError], status: int, code: str
) -> None:
    error = domain_error(exc, "doing it failed", EVERY_DOMAIN_MEANING)
    assert type(error) is kind
    assert (error.http_status, error.code) == (status, code)
    assert str(exc) in error.detail


@pytest.mark.parametrize(("exc", "kind", "status", "code"), MEANINGS)
def test_an_unexpected_refusal_is_the_platform_failing_us(
    exc: PlatformError, kind: type[ConnectorError], status: int, code: str
) -> None:
    """A 404 to an inbox page is not a missing recipient: without ``expect``, always 503."""
    error = domain_error(exc, "cannot reach the platform inbox")
    assert type(error) is PlatformUnavailable
    assert error.detail == f"cannot reach the platform inbox: {exc}"


def test_only_the_expected_refusals_are_told_apart() -> None:
    expect: Mapping[type[ConnectorError], str | None] = {FileNotFound: None}
    assert type(domain_error(PlatformFileNotFoundError(), "x", expect)) is FileNotFound
    assert type(domain_error(PlatformFileTooLargeError(), "x", expect)) is PlatformUnavailable


def test_a_call_may_word_the_detail_but_not_change_the_class() -> None:
    exc = PlatformQuotaExceededError("429 quota_exceeded: envelopes per day")
    expect: Mapping[type[ConnectorError], str | None] = {
        PlatformQuotaExceeded: "the platform refused the file: quota used up ({reason})"
    }
    error = domain_error(exc, "file upload failed", expect)
    assert type(error) is PlatformQuotaExceeded
    assert error.detail == (
        "the platform refused the file: quota used up (429 quota_exceeded: envelopes per day)"
    )


def test_unknown_recipients_are_named() -> None:
    exc = PlatformRecipientNotFoundError(["id1a", "id1b"])
    error = domain_error(exc, "send", {RecipientNotFound: None})
    assert error.extra == {"recipients": ["id1a", "id1b"]}


def test_the_context_manager_raises_the_translation_from_the_platform_error() -> None:
    cause = PlatformUnavailableError("platform unreachable: reset")
    with pytest.raises(PlatformUnavailable) as caught, platform_errors("file download failed"):
        raise cause
    assert caught.value.__cause__ is cause
    assert caught.value.detail == "file download failed: platform unreachable: reset"


def test_the_context_manager_lets_everything_else_through() -> None:
    with pytest.raises(FileTooLarge), platform_errors("file upload failed"):
        raise FileTooLarge("ours, from the request body")
    with pytest.raises(KeyError), platform_errors("x"):
        raise KeyError("a bug stays a bug")


# -- classify_send ---------------------------------------------------------------------------


def test_a_send_that_returned_was_sent() -> None:
    assert classify_send(None) == Sent()


@pytest.mark.parametrize(
    ("exc", "retry_after"),
    [
        (PlatformUnavailableError("platform answered 503 busy: d", retry_after=30.0), 30.0),
        (PlatformUnavailableError("platform unreachable: refused"), None),
        (PlatformQuotaExceededError("429 quota_exceeded", retry_after=3600.0), 3600.0),
    ],
)
def test_transient_failures_are_tried_again_with_the_platforms_wait(
    exc: PlatformUnavailableError, retry_after: float | None
) -> None:
    assert classify_send(exc) == TryAgain(str(exc), retry_after)


def test_our_own_deadline_is_tried_again() -> None:
    outcome = classify_send(TimeoutError())
    assert isinstance(outcome, TryAgain) and outcome.retry_after is None


def test_unknown_recipients_are_refused_for_good_with_the_error_for_a_waiting_caller() -> None:
    exc = PlatformRecipientNotFoundError(["id1a"], "Not registered: id1a")
    outcome = classify_send(exc)
    assert isinstance(outcome, Refused)
    assert outcome.error == f"recipient not found: {exc}"
    assert isinstance(outcome.unknown_recipients, RecipientNotFound)
    assert outcome.unknown_recipients.detail == str(exc)
    assert outcome.unknown_recipients.extra == {"recipients": ["id1a"]}


def test_other_refusals_are_permanent_without_a_domain_error() -> None:
    exc = PlatformRejectedError(409, "message_id_conflict", "another body under this id")
    assert classify_send(exc) == Refused(f"platform refused the message: {exc}")


class OnePlatform:
    """Answers ``send_message`` as told: return, raise, or never answer."""

    def __init__(self, raises: BaseException | None = None, hang: bool = False) -> None:
        self.raises = raises
        self.hang = hang
        self.sent: list[Mapping[str, Any]] = []

    async def send_message(self, envelope: Mapping[str, Any]) -> None:
        if self.hang:
            await asyncio.Event().wait()
        if self.raises is not None:
            raise self.raises
        self.sent.append(envelope)


async def test_attempt_send_classifies_what_the_platform_did() -> None:
    envelope = {"id": "MSG0123456789ABCDEFGH"}
    platform = OnePlatform()
    assert await attempt_send(platform, envelope) == Sent()  # type: ignore[arg-type]
    assert platform.sent == [envelope]
    busy = PlatformUnavailableError("busy", retry_after=5.0)
    outcome = await attempt_send(OnePlatform(busy), envelope)  # type: ignore[arg-type]
    assert outcome == TryAgain("busy", 5.0)


async def test_attempt_send_past_its_bound_is_tried_again() -> None:
    outcome = await attempt_send(OnePlatform(hang=True), {"id": "MSG1"}, within=0.01)  # type: ignore[arg-type]
    assert outcome == TryAgain("the platform did not answer in time")


async def test_attempt_send_lets_a_bug_through() -> None:
    with pytest.raises(ValueError):
        await attempt_send(OnePlatform(ValueError("no id")), {})  # type: ignore[arg-type]
