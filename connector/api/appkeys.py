"""Typed keys for what the application and requests carry (no module globals)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from connector.runtime import Runtime
    from connector.services.api_keys import ApiKeyService, Principal

RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime")
API_KEYS: web.AppKey[ApiKeyService] = web.AppKey("api_keys")
SCOPES: web.AppKey[Mapping[str, str]] = web.AppKey("resolved_scopes")
"""Route scopes that depend on the settings (``routing.METRICS``) -> the scope that applies."""
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal")
