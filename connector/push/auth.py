"""How a push request proves who sends it to an endpoint behind a login (DESIGN.md section 7).

``auth`` on a subscription is one of three shapes, told apart by ``type``: ``basic`` (a user
name and a password), ``bearer`` (a fixed token) or ``oauth2`` (client credentials: a token is
fetched from ``tokenUrl`` and cached until it expires, as Camunda 8 SaaS and self-managed
Identity require). The shapes are pydantic models, so config, the API and the OpenAPI document
share them; they are stored sealed with the master key and never shown again. Their secret
fields (``password``, ``token``, ``clientSecret``) are left out of ``repr()`` and ``str()``, and
validation errors do not echo the input.

:class:`AuthHeaders` turns a shape into the ``Authorization`` header of a request, fetching and
caching OAuth2 tokens (RFC 6749 section 4.4: a form-encoded POST of ``grant_type``,
``client_id``, ``client_secret`` and ``scope``/``audience`` when set, as Camunda 8 Identity,
Auth0 and Keycloak accept it). A token endpoint that fails raises :class:`AuthUnavailable`, whose
text says what the endpoint answered but never holds the secret or a token; nothing here logs
either.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, Literal

import aiohttp
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
from yarl import URL

from connector.push.url_policy import UrlPolicy, WebhookUrlRefused

__all__ = [
    "DEFAULT_EXPIRES_IN",
    "DEFAULT_TOKEN_TIMEOUT",
    "MAX_EXPIRES_IN",
    "TOKEN_RESPONSE_LIMIT",
    "AuthHeaders",
    "AuthUnavailable",
    "BasicAuth",
    "BearerAuth",
    "OAuth2ClientCredentials",
    "WebhookAuth",
]

logger = logging.getLogger(__name__)

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


DEFAULT_TOKEN_TIMEOUT = 15.0  # seconds a token request may take, resolving and reading included
TOKEN_RESPONSE_LIMIT = 64 * 1024  # bytes of a token endpoint's answer read at most
DEFAULT_EXPIRES_IN = 300.0  # seconds a token is used when the answer does not say
MAX_EXPIRES_IN = 86_400.0  # a longer lifetime is cut to a day (a 401 still drops it earlier)
_MAX_DETAIL = 200  # characters of an OAuth2 error and its description kept in a message
_TOKEN = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: safe in a header (RFC 6750 b64token+)


class AuthUnavailable(Exception):
    """No access token could be had from the token endpoint; ``str(exc)`` says why.

    The text names the token URL (without its query), the HTTP status and up to 200 characters
    of the OAuth2 ``error`` and ``error_description``; never the client secret or a token.
    """


@dataclass(frozen=True, slots=True)
class _Token:
    header: str  # "Bearer <access token>"
    refresh_at: float  # on the clock of AuthHeaders: from then on a new token is fetched


_Key = tuple[str, str, str | None, str | None, str]


def _key(auth: OAuth2ClientCredentials) -> _Key:
    secret = hashlib.sha256(auth.client_secret.encode()).hexdigest()
    return (auth.token_url, auth.client_id, auth.scope, auth.audience, secret)


class AuthHeaders:
    """The ``Authorization`` header a push request carries, per the subscription's ``auth``.

    OAuth2 access tokens are fetched with the client credentials grant and cached per token URL,
    client, scope, audience and secret until shortly before they expire (a margin of 10 % of
    their lifetime, at most 60 s); callers that need the same token at once share one request.
    When an endpoint answers 401, call :meth:`invalidate` so that the next attempt fetches a
    fresh token. ``url_policy``, when given, also guards the token URL; ``timeout`` bounds each
    token request; ``clock`` (seconds, monotonic) measures lifetimes.
    """

    def __init__(
        self,
        *,
        url_policy: UrlPolicy | None = None,
        timeout: float = DEFAULT_TOKEN_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = url_policy
        self._timeout = timeout
        self._clock = clock
        self._tokens: dict[_Key, _Token] = {}
        self._fetching: dict[_Key, asyncio.Task[_Token]] = {}

    async def headers(
        self, auth: WebhookAuth | None, http: aiohttp.ClientSession
    ) -> dict[str, str]:
        """The headers ``auth`` asks for: none, or ``Authorization``.

        Raises :class:`AuthUnavailable` when an OAuth2 token cannot be had.
        """
        if auth is None:
            return {}
        if isinstance(auth, BasicAuth):
            # RFC 7617 with charset="UTF-8"; the model already forbids ':' in the user name.
            pair = f"{auth.username}:{auth.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
        if isinstance(auth, BearerAuth):
            return {"Authorization": f"Bearer {auth.token}"}
        return {"Authorization": (await self._oauth2(auth, http)).header}

    def invalidate(
        self, auth: WebhookAuth | None, refused: Mapping[str, str] | None = None
    ) -> None:
        """Forget the cached OAuth2 token of ``auth``; the next :meth:`headers` fetches one.

        ``refused``, when given, are the headers the refused request carried: the token is then
        dropped only if it is still the cached one, so that many requests refused at once with
        the same old token do not throw away the fresh token the first of them caused.
        """
        if not isinstance(auth, OAuth2ClientCredentials):
            return
        key = _key(auth)
        token = self._tokens.get(key)
        if token is None:
            return
        if refused is not None:
            sent = [v for k, v in refused.items() if k.lower() == "authorization"]
            if sent != [token.header]:
                return
        del self._tokens[key]

    async def _oauth2(self, auth: OAuth2ClientCredentials, http: aiohttp.ClientSession) -> _Token:
        key = _key(auth)
        token = self._tokens.get(key)
        if token is not None and self._clock() < token.refresh_at:
            return token
        task = self._fetching.get(key)
        if task is None:
            task = asyncio.create_task(self._fetch(auth, http))
            self._fetching[key] = task
            task.add_done_callback(partial(self._fetched, key))
        # Shielded: a caller that gives up does not cancel the request others wait for.
        return await asyncio.shield(task)

    def _fetched(self, key: _Key, task: asyncio.Task[_Token]) -> None:
        if self._fetching.get(key) is task:
            del self._fetching[key]
        if task.cancelled() or task.exception() is not None:
            return  # failures are not cached: the next attempt asks again
        now = self._clock()
        for stale in [k for k, t in self._tokens.items() if t.refresh_at <= now]:
            del self._tokens[stale]
        self._tokens[key] = task.result()

    async def _fetch(self, auth: OAuth2ClientCredentials, http: aiohttp.ClientSession) -> _Token:
        started = self._clock()
        where = _shown(auth.token_url)
        form = {
            "grant_type": "client_credentials",
            "client_id": auth.client_id,
            "client_secret": auth.client_secret,
        }
        if auth.scope is not None:
            form["scope"] = auth.scope
        if auth.audience is not None:
            form["audience"] = auth.audience
        try:
            async with asyncio.timeout(self._timeout):
                if self._policy is not None:
                    await self._policy.check_resolved(auth.token_url)
                async with http.post(
                    auth.token_url,
                    data=form,
                    headers={"Accept": "application/json"},
                    allow_redirects=False,
                ) as response:
                    status = response.status
                    body = await _read(response, where)
        except WebhookUrlRefused as exc:
            raise AuthUnavailable(f"the token URL is refused: {exc}") from None
        except TimeoutError:
            raise AuthUnavailable(
                f"the token endpoint {where} did not answer within {self._timeout:g} s"
            ) from None
        except aiohttp.ClientError as exc:
            text = _scrub(f"{type(exc).__name__}: {exc}", auth.client_secret)[:300]
            raise AuthUnavailable(f"the token endpoint {where} was not reached: {text}") from None
        if not 200 <= status < 300:
            detail = _oauth2_error(body, auth.client_secret)
            raise AuthUnavailable(
                f"the token endpoint {where} answered HTTP {status}"
                + (f": {detail}" if detail else "")
            )
        header, lifetime = _parse_token(body, where)
        logger.debug(
            "fetched an OAuth2 access token",
            extra={"token_url": where, "expires_in": lifetime},
        )
        return _Token(header=header, refresh_at=started + lifetime - min(60.0, 0.1 * lifetime))


async def _read(response: aiohttp.ClientResponse, where: str) -> bytes:
    body = bytearray()
    while chunk := await response.content.read(TOKEN_RESPONSE_LIMIT + 1 - len(body)):
        body += chunk
        if len(body) > TOKEN_RESPONSE_LIMIT:
            response.close()
            raise AuthUnavailable(
                f"the token endpoint {where} answered with more than"
                f" {TOKEN_RESPONSE_LIMIT // 1024} KiB"
            )
    return bytes(body)


def _parse_token(body: bytes, where: str) -> tuple[str, float]:
    """``Bearer <token>`` and the token's lifetime in seconds, from a 2xx answer."""
    try:
        answer: Any = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        raise AuthUnavailable(f"the token endpoint {where} did not answer with JSON") from None
    if not isinstance(answer, dict):
        raise AuthUnavailable(f"the token endpoint {where} did not answer with a JSON object")
    token = answer.get("access_token")
    if not isinstance(token, str) or not _TOKEN.match(token):
        raise AuthUnavailable(f"the token endpoint {where} gave no usable access_token")
    token_type = answer.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        shown = _printable(token_type)[:40] if isinstance(token_type, str) else token_type
        raise AuthUnavailable(
            f"the token endpoint {where} gave a token of type {shown!r}, not a bearer token"
        )
    return f"Bearer {token}", _lifetime(answer.get("expires_in"), where)


def _lifetime(value: object, where: str) -> float:
    if value is None:
        return DEFAULT_EXPIRES_IN
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value.strip().isdecimal():  # some servers send a string
        seconds = float(value.strip())
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        raise AuthUnavailable(
            f"the token endpoint {where} gave expires_in"
            f" {_printable(str(value))[:40]!r}, not a number of seconds"
        )
    return min(seconds, MAX_EXPIRES_IN)


def _oauth2_error(body: bytes, secret: str) -> str:
    """``error: error_description`` of an OAuth2 error answer (RFC 6749 5.2), scrubbed, short."""
    try:
        answer: Any = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        return ""
    if not isinstance(answer, dict):
        return ""
    parts = [answer.get(name) for name in ("error", "error_description")]
    text = ": ".join(_printable(part) for part in parts if isinstance(part, str) and part)
    return _scrub(text, secret)[:_MAX_DETAIL]


def _scrub(text: str, secret: str) -> str:
    for spelling in {secret, urllib.parse.quote_plus(secret), urllib.parse.quote(secret)}:
        text = text.replace(spelling, "***")
    return text


def _printable(text: str) -> str:
    return "".join(char if char.isprintable() else "\ufffd" for char in text)


def _shown(url: str) -> str:
    """The token URL as messages show it: without user info, query or fragment."""
    try:
        return str(URL(url).with_user(None).with_query(None).with_fragment(None))
    except (ValueError, TypeError):
        return "(an invalid URL)"
