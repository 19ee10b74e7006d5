"""``/api/v1/account``: this connector's identity, and pulling from the platform."""

from __future__ import annotations

import base64

from aiohttp import web

from connector.api.appkeys import RUNTIME
from connector.api.params import json_response
from connector.api.routing import RouteTable
from connector.schemas import IdentityOut, SyncResult, SyncStatus

routes = RouteTable("account")


@routes.get(
    "/api/v1/account/identity",
    scope="messages:read",
    summary="This connector's address and public keys",
    response=IdentityOut,
)
async def get_identity(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    return json_response(
        IdentityOut(
            address=runtime.address,
            signing_key=base64.b64encode(runtime.keys.signing_public).decode(),
            exchange_key=base64.b64encode(runtime.keys.exchange_public).decode(),
            created_at=runtime.identity.created_at,
        )
    )


@routes.post(
    "/api/v1/account/sync",
    scope="messages:read",
    summary="Pull new messages and receipts from the platform now",
    response=SyncResult,
    responses={503: "the platform cannot be reached"},
)
async def sync_now(request: web.Request) -> web.StreamResponse:
    counts = await request.app[RUNTIME].sync.pull_all()
    return json_response(
        SyncResult(received=counts.received, receipts=counts.receipts, rejected=counts.rejected)
    )


@routes.get(
    "/api/v1/account/sync",
    scope="messages:read",
    summary="How the last pulls went",
    response=SyncStatus,
)
async def sync_status(request: web.Request) -> web.StreamResponse:
    state = await request.app[RUNTIME].status.sync_state()
    return json_response(
        SyncStatus(
            last_run_at=state.last_run_at,
            last_success_at=state.last_success_at,
            last_error=state.last_error,
            cursor=state.cursor,
            total_received=state.total_received,
            last_received=state.last_received,
            last_receipts=state.last_receipts,
            last_rejected=state.last_rejected,
            failures=state.failures,
        )
    )
