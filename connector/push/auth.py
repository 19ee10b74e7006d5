"""How a push request proves who sends it to an endpoint behind a login (DESIGN.md section 7).

``auth`` on a subscription is one of three shapes, told apart by ``type``: ``basic`` (a user
name and a password), ``bearer`` (a fixed token) or ``oauth2`` (client credentials: a token is
fetched from ``tokenUrl`` and cached until it expires, as Camunda 8 SaaS and self-managed
Identity require). The shapes are pydantic models, so config, the API and the OpenAPI document
share them; they are stored sealed with the master key and never shown again. Their secret
fields (``password``, ``token``, ``clientSecret``) are left out of ``repr()`` and ``str()``, and
validation errors do not echo the input.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = ["BasicAuth", "BearerAuth", "OAuth2ClientCredentials", "WebhookAuth"]

_Secret = Annotated[str, Field(min_length=1, max_length=4096)]
_Hidden = Field(repr=False)  # kept out of repr() and str(), so logs and tracebacks never show it


class _Auth(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        hide_input_in_errors=True,
    )


class BasicAuth(_Auth):
    """HTTP Basic (RFC 7617)."""

    type: Literal["basic"]
    username: Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^[^:\x00-\x1f\x7f]*$")]
    password: Annotated[_Secret, _Hidden]


class BearerAuth(_Auth):
    """A fixed bearer token (RFC 6750)."""

    type: Literal["bearer"]
    token: Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[\x21-\x7e]+$"), _Hidden]


class OAuth2ClientCredentials(_Auth):
    """OAuth 2.0 client credentials grant (RFC 6749 section 4.4)."""

    type: Literal["oauth2"]
    token_url: Annotated[str, Field(min_length=1, max_length=2048)]
    client_id: _Secret
    client_secret: Annotated[_Secret, _Hidden]
    scope: Annotated[str, Field(max_length=1024)] | None = None
    audience: Annotated[str, Field(max_length=1024)] | None = None
    """Sent when set: Camunda's Identity and Auth0 ask for it."""


def _hide_input(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Validate, but keep the input (with its secrets) out of the error, wherever it is nested.

    ``hide_input_in_errors`` only counts on the outermost model, which is not ours; so the
    errors are raised again with the input replaced.
    """
    try:
        return handler(value)
    except ValidationError as exc:
        try:
            details = [
                InitErrorDetails(
                    type=error["type"], loc=error["loc"], input="(hidden)", ctx=error.get("ctx", {})
                )
                for error in exc.errors(include_url=False)
            ]
            hidden = ValidationError.from_exception_data(exc.title, details, hide_input=True)
        except (KeyError, TypeError, ValueError):
            raise PydanticCustomError("invalid_auth", "not a valid auth object") from None
        raise hidden from None


WebhookAuth = Annotated[
    Annotated[BasicAuth | BearerAuth | OAuth2ClientCredentials, Field(discriminator="type")],
    WrapValidator(_hide_input),
]
