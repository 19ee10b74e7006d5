"""The auth shapes keep their secrets out of repr(), str() and validation errors."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from connector.push.auth import BasicAuth, BearerAuth, OAuth2ClientCredentials, WebhookAuth

SECRET = "s3cr3t+/=&ä-client-secret"


def test_repr_and_str_hide_secrets() -> None:
    shapes: list[tuple[Any, str]] = [
        (BasicAuth(type="basic", username="user", password="pa55word"), "pa55word"),
        (BearerAuth(type="bearer", token="t0ken-value"), "t0ken-value"),
        (
            OAuth2ClientCredentials(
                type="oauth2",
                token_url="https://id.example/token",
                client_id="c",
                client_secret=SECRET,
            ),
            SECRET,
        ),
    ]
    for shape, secret in shapes:
        for text in (repr(shape), str(shape), f"{shape}", f"{shape!r}", repr([shape])):
            assert secret not in text
        assert shape.type in repr(shape)
        assert secret in shape.model_dump_json(by_alias=True)  # still stored in full
    assert "username='user'" in repr(shapes[0][0])
    assert "client_id='c'" in repr(shapes[2][0])


class Subscription(BaseModel):
    """A model holding an auth, as the settings and the API do."""

    url: str
    auth: WebhookAuth | None = None


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "bearer", "token": "has space-s3cr3t"},
        {"type": "basic", "username": "u:x-s3cr3t", "password": "p"},
        {"type": "basic", "username": "u", "password": "s3cr3t" * 1000},
        {"type": "oauth2", "tokenUrl": "https://id.example/t", "clientId": "c", "clientSecret": ""},
        {"type": "oauth2", "tokenUrl": "https://id.example/t", "clientSecret": "s3cr3t"},
        {"type": "bearer", "token": "s3cr3t", "extra": "s3cr3t"},
    ],
)
def test_validation_errors_do_not_echo_secrets(raw: dict[str, Any]) -> None:
    adapter: TypeAdapter[Any] = TypeAdapter(WebhookAuth)
    with pytest.raises(ValidationError) as caught:
        adapter.validate_python(raw)
    assert "s3cr3t" not in str(caught.value)
    with pytest.raises(ValidationError) as caught:
        Subscription.model_validate({"url": "https://x.example/", "auth": raw})
    assert "s3cr3t" not in str(caught.value)
    assert "s3cr3t" not in repr(caught.value.errors())
    assert caught.value.errors()[0]["loc"][0] == "auth"  # still says where
