"""``/api/v1/events``: the event feed, oldest first, with long-polling."""

from __future__ import annotations

from aiohttp import web

from connector.api.appkeys import RUNTIME
from connector.api.params import client_gone, json_response, query
from connector.api.routing import RouteTable
from connector.schemas import EventListQuery, EventOut, EventPage
from storage.models import Event

routes = RouteTable("events")


@routes.get(
    "/api/v1/events",
    scope="messages:read",
    summary="The event feed, oldest first, each event once and in commit order. Continue with "
    "after=nextCursor (never null here); with nothing new it answers after `wait` seconds with "
    "no items and the same cursor, and at once when a matching event is committed",
    query=EventListQuery,
    response=EventPage,
    responses={400: "validation_failed: a bad parameter, event type or cursor"},
)
async def list_events(request: web.Request) -> web.StreamResponse:
    params = query(request, EventListQuery)

    page = await request.app[RUNTIME].events.read(
        after=params.after,
        limit=params.limit,
        types=params.type,
        wait=params.wait,
        gone=lambda: client_gone(request),
    )
    return json_response(
        EventPage(items=[_event_out(e) for e in page.events], next_cursor=page.cursor)
    )


async def end_long_polls(app: web.Application) -> None:
    """``on_shutdown``: answer open long-polls now, so they do not hold up the shutdown."""
    runtime = app.get(RUNTIME)
    if runtime is not None:
        runtime.events.close()


def _event_out(event: Event) -> EventOut:
    return EventOut.model_validate(
        {"id": event.id, "type": event.type, "createdAt": event.created_at, "data": event.data}
    )
