"""How a push request proves who sends it to an endpoint behind a login (DESIGN.md section 7).

``auth`` on a subscription is one of three shapes, told apart by ``type``: ``basic`` (a user
name and a password), ``bearer`` (a fixed token) or ``oauth2`` (client credentials: a token is
fetched from ``tokenUrl`` and cached until it expires, as Camunda 8 SaaS and self-managed
Identity require). The shapes are pydantic models, so config, the API and the OpenAPI document
share them; they are stored sealed with the master key and never shown again.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

__all__ = ["BasicAuth", "BearerAuth", "OAuth2ClientCredentials", "WebhookAuth"]

_Secret = Annotated[str, Field(min_length=1, max_length=4096)]


class _Auth(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class BasicAuth(_Auth):
    """HTTP Basic (RFC 7617)."""

    type: Literal["basic"]
    username: Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^[^:\x00-\x1f\x7f]*$")]
    password: _Secret


class BearerAuth(_Auth):
    """A fixed bearer token (RFC 6750)."""

    type: Literal["bearer"]
    token: Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[\x21-\x7e]+$")]


class OAuth2ClientCredentials(_Auth):
    """OAuth 2.0 client credentials grant (RFC 6749 section 4.4)."""

    type: Literal["oauth2"]
    token_url: Annotated[str, Field(min_length=1, max_length=2048)]
    client_id: _Secret
    client_secret: _Secret
    scope: Annotated[str, Field(max_length=1024)] | None = None
    audience: Annotated[str, Field(max_length=1024)] | None = None
    """Sent when set: Camunda's Identity and Auth0 ask for it."""


WebhookAuth = Annotated[
    BasicAuth | BearerAuth | OAuth2ClientCredentials, Field(discriminator="type")
]
