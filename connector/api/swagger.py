"""``GET /api/docs``: Swagger UI, served from the pinned ``swagger-ui-bundle`` package.

Nothing is loaded from elsewhere, so the page works on networks without internet access: the
page, its script and Swagger UI's own files all come from this connector, and a
``Content-Security-Policy`` keeps it that way (no inline script, no other origin). Only the
files named in :data:`ASSETS` are served; an asset name is looked up in that table, never
joined to a path, so nothing else on disk can be reached through the route.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from swagger_ui_bundle import swagger_ui_path

from connector.api.routing import PUBLIC, RouteTable
from connector.errors import NotFound

routes = RouteTable("docs")

PAGE = "/api/docs"
_BUNDLE = Path(str(swagger_ui_path))

# Assets change only with the package (or this module), so browsers may keep them a day; the
# page itself is revalidated, so an upgrade shows at the next load.
_ASSET_CACHE = "public, max-age=86400"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        # Swagger UI sets style attributes in the markup it renders; styles cannot run code.
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",  # the CSS's inline SVG icons; image responses
        "font-src 'self' data:",
        "connect-src 'self'",  # the OpenAPI document and "Try it out"
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)

# Asks for this connector's API key once (kept in the browser's localStorage) and sends it as
# X-API-KEY with every request the page makes. A file of its own, not inline, so that the
# policy above can forbid inline script.
_INIT_JS = """\
"use strict";
(function () {
  var KEY = "connector-api-key";
  if (!window.localStorage.getItem(KEY)) {
    window.localStorage.setItem(KEY, window.prompt("X-API-KEY for this connector") || "");
  }
  window.ui = SwaggerUIBundle({
    url: "/api/v1/openapi.json",
    dom_id: "#ui",
    persistAuthorization: true,
    validatorUrl: null,
    requestInterceptor: function (request) {
      var key = window.localStorage.getItem(KEY);
      if (key && !request.headers["X-API-KEY"]) {
        request.headers["X-API-KEY"] = key;
      }
      return request;
    }
  });
})();
"""


@dataclass(frozen=True)
class Asset:
    content_type: str
    path: Path | None = None
    """A file of the bundle; None for :data:`_INIT_JS`."""


ASSETS: dict[str, Asset] = {
    "swagger-ui.css": Asset("text/css; charset=utf-8", _BUNDLE / "swagger-ui.css"),
    "swagger-ui-bundle.js": Asset(
        "text/javascript; charset=utf-8", _BUNDLE / "swagger-ui-bundle.js"
    ),
    "favicon-32x32.png": Asset("image/png", _BUNDLE / "favicon-32x32.png"),
    "favicon-16x16.png": Asset("image/png", _BUNDLE / "favicon-16x16.png"),
    "connector-docs.js": Asset("text/javascript; charset=utf-8"),
}

_HTML = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Connector API</title>
<link rel="stylesheet" href="{PAGE}/swagger-ui.css">
<link rel="icon" type="image/png" href="{PAGE}/favicon-32x32.png" sizes="32x32">
<link rel="icon" type="image/png" href="{PAGE}/favicon-16x16.png" sizes="16x16">
</head>
<body><div id="ui"></div>
<script src="{PAGE}/swagger-ui-bundle.js"></script>
<script src="{PAGE}/connector-docs.js"></script>
</body></html>
"""

_COMMON_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


@routes.get(PAGE, scope=PUBLIC, summary="Swagger UI", content_type="text/html")
async def swagger_ui(request: web.Request) -> web.StreamResponse:
    return web.Response(
        text=_HTML,
        content_type="text/html",
        headers={
            **_COMMON_HEADERS,
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "Cache-Control": "no-cache",
        },
    )


@routes.get(
    PAGE + "/{asset}",
    scope=PUBLIC,
    summary="A file of the Swagger UI page (stylesheet, scripts, icons)",
    responses={404: "not one of the page's files"},
)
async def swagger_asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["asset"]
    asset = ASSETS.get(name)
    if asset is None:
        raise NotFound(f"the Swagger UI page has no such file (see {PAGE})")
    headers = {**_COMMON_HEADERS, "Content-Type": asset.content_type, "Cache-Control": _ASSET_CACHE}
    if asset.path is None:
        return web.Response(text=_INIT_JS, headers=headers)
    return web.FileResponse(asset.path, headers=headers)
