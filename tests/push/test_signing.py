"""Standard Webhooks signing, checked by the third-party verifier receivers use."""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from connector.push.signing import (
    InvalidWebhookSecret,
    SignedRequest,
    WebhookSecret,
    headers,
    new_secret,
    parse_secret,
    sign,
)

PAYLOAD = {
    "id": "EVTabcdefghijklmnopq",
    "type": "message.received",
    "timestamp": "2026-12-05T10:00:00Z",
    "data": {"subject": "Grüße ✓", "amount": 12.5, "items": [1, 2, 3], "none": None},
}


def test_known_answer_from_the_standard_webhooks_test_vector() -> None:
    secret = parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_reference_verifier_accepts_our_request() -> None:
    secret = new_secret()
    request = SignedRequest.of("EVTabcdefghijklmnopq", PAYLOAD)
    sent = request.headers(secret)
    assert set(sent) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert sent["webhook-id"] == "EVTabcdefghijklmnopq"
    assert sent["webhook-timestamp"].isdigit()
    assert Webhook(str(secret)).verify(request.body, sent) == PAYLOAD


def test_the_reference_verifier_rejects_a_wrong_secret() -> None:
    request = SignedRequest.of("EVTabcdefghijklmnopq", PAYLOAD)
    sent = request.headers(new_secret())
    with pytest.raises(WebhookVerificationError, match="signature"):
        Webhook(str(new_secret())).verify(request.body, sent)


@pytest.mark.parametrize("position", [0, 1, 40, -2, -1])
def test_the_reference_verifier_rejects_a_body_altered_in_one_byte(position: int) -> None:
    secret = new_secret()
    request = SignedRequest.of("EVTabcdefghijklmnopq", PAYLOAD)
    sent = request.headers(secret)
    altered = bytearray(request.body)
    altered[position] ^= 0x01
    assert bytes(altered) != request.body
    with pytest.raises(WebhookVerificationError, match="signature"):
        Webhook(str(secret)).verify(bytes(altered), sent)
    Webhook(str(secret)).verify(request.body, sent)  # the original still verifies


def test_the_reference_verifier_rejects_an_old_timestamp() -> None:
    secret = new_secret()
    request = SignedRequest.of("EVTabcdefghijklmnopq", PAYLOAD)
    old = request.headers(secret, datetime.now(UTC) - timedelta(minutes=10))
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(str(secret)).verify(request.body, old)
    # The same request signed again for a new attempt verifies: only the timestamp was stale.
    Webhook(str(secret)).verify(request.body, request.headers(secret))


def test_headers_agree_with_the_reference_signer() -> None:
    secret = new_secret()
    body = SignedRequest.of("EVT1", PAYLOAD).body
    ours = headers(secret, "EVT1", 1_800_000_000, body)
    theirs = Webhook(str(secret)).sign("EVT1", datetime.fromtimestamp(1_800_000_000, UTC), body)
    assert ours == {
        "webhook-id": "EVT1",
        "webhook-timestamp": "1800000000",
        "webhook-signature": theirs,
    }


def test_the_body_is_serialised_once_and_every_attempt_sends_it_unchanged() -> None:
    secret = new_secret()
    payload = json.loads(json.dumps(PAYLOAD))
    request = SignedRequest.of("EVTabcdefghijklmnopq", payload)
    body = request.body
    assert body == json.dumps(PAYLOAD, separators=(",", ":"), ensure_ascii=False).encode()
    assert "Grüße ✓".encode() in body  # UTF-8, not \u escapes
    payload["data"]["subject"] = "changed after the event was made"
    now = datetime.now(UTC)
    first = request.headers(secret, now - timedelta(seconds=90))
    second = request.headers(secret, now)
    assert request.body is body
    assert first["webhook-id"] == second["webhook-id"] == "EVTabcdefghijklmnopq"
    assert first["webhook-timestamp"] != second["webhook-timestamp"]
    assert first["webhook-signature"] != second["webhook-signature"]
    for sent in (first, second):
        assert Webhook(str(secret)).verify(body, sent) == PAYLOAD
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.body = b"{}"  # type: ignore[misc]


def test_a_stored_body_rebuilds_the_same_request() -> None:
    original = SignedRequest.of("EVT1", PAYLOAD)
    assert SignedRequest("EVT1", bytes(original.body)) == original


def test_values_that_are_not_json_are_refused() -> None:
    with pytest.raises(ValueError):
        SignedRequest.of("EVT1", {"x": float("nan")})


@pytest.mark.parametrize("msg_id", ["", "has space", "tab\there", "ümlaut", "x" * 257])
def test_an_id_that_cannot_be_a_header_is_refused(msg_id: str) -> None:
    with pytest.raises(ValueError, match="webhook id"):
        SignedRequest(msg_id, b"{}")
    with pytest.raises(ValueError, match="webhook id"):
        sign(new_secret(), msg_id, 1, b"{}")


def test_a_naive_attempt_time_is_refused() -> None:
    with pytest.raises(ValueError):
        SignedRequest("EVT1", b"{}").headers(new_secret(), datetime(2026, 12, 5, 10, 0))


def test_a_secret_round_trips_through_its_text() -> None:
    secret = new_secret()
    text = str(secret)
    assert text.startswith("whsec_")
    assert len(base64.b64decode(text[len("whsec_") :], validate=True)) == 32
    assert parse_secret(text) == secret
    assert Webhook(text)._whsecret == secret.key
    assert new_secret() != secret


def test_a_secret_without_padding_and_one_of_24_or_64_bytes_parse() -> None:
    for size in (24, 25, 26, 64):
        key = bytes(range(size))
        text = "whsec_" + base64.b64encode(key).decode().rstrip("=")
        assert parse_secret(text).key == key


def test_repr_hides_the_secret() -> None:
    secret = new_secret()
    assert str(secret)[6:] not in repr(secret)
    assert "hidden" in repr(secret)


def _b64(size: int) -> str:
    return base64.b64encode(bytes(range(size))).decode()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "start with"),
        (_b64(32), "start with"),
        ("WHSEC_" + _b64(32), "start with"),
        ("whsec_", "standard base64"),
        (" whsec_" + _b64(32), "start with"),
        ("whsec_" + _b64(32) + "\n", "standard base64"),
        ("whsec_" + _b64(32)[:20] + " " + _b64(32)[20:], "standard base64"),
        ("whsec_" + base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode(), "standard base64"),
        ("whsec_" + _b64(32)[:-1] + "!", "standard base64"),
        ("whsec_" + "A" * 41, "standard base64"),  # a length no base64 has
        ("whsec_" + _b64(30) + "==", "standard base64"),  # padding where none belongs
        ("whsec_" + _b64(16), "24 to 64 bytes, this one is 16"),
        ("whsec_" + _b64(23), "24 to 64 bytes, this one is 23"),
        ("whsec_" + _b64(65), "24 to 64 bytes, this one is 65"),
    ],
)
def test_malformed_secrets_are_refused_with_a_clear_message(text: str, reason: str) -> None:
    with pytest.raises(InvalidWebhookSecret, match=reason) as caught:
        parse_secret(text)
    encoded = text.strip().removeprefix("whsec_")
    if encoded:
        assert encoded not in str(caught.value)


def test_a_key_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(InvalidWebhookSecret, match="this one is 0"):
        WebhookSecret(b"")
