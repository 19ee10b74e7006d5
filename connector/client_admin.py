"""Client commands for operators over the REST API: ``connector events ...`` and
``connector webhooks ...``.

Like ``connector files`` and ``connector messages`` they talk to a running connector
(``--url``/``CONNECTOR_URL``, ``--api-key``/``CONNECTOR_API_KEY``) and print JSON, one object a
line, so their output pipes into ``jq`` or a script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any
from urllib.parse import quote

import aiohttp

from connector.cli_args import rfc3339
from connector.client_cli import ClientError, _check, client_options

_RECONNECT_MAX = 30.0  # seconds between tries while the connector cannot be reached
_DELIVERY_STATUSES = ("pending", "succeeded", "failed", "dead")


def add_admin_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    events = commands.add_parser("events", help="follow the event feed (client)")
    event_commands = events.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    follow = event_commands.add_parser(
        "follow",
        help="print events as they happen, one JSON line each, until Ctrl-C",
        description="Print the event feed, oldest first and then live (GET /api/v1/events "
        "long-polls), one JSON object per line, until Ctrl-C or SIGTERM (exit 0). On stop it "
        "says which --after continues where it stopped. While the connector cannot be "
        "reached it keeps trying.",
    )
    follow.add_argument(
        "--type",
        action="append",
        default=[],
        dest="types",
        metavar="TYPE",
        help="only events of this type, e.g. message.received; repeat for several",
    )
    follow.add_argument(
        "--after",
        help="a cursor (nextCursor, or the one printed on stop): only events after it "
        "(default: the whole feed, from its oldest event)",
    )
    follow.add_argument(
        "--wait",
        type=float,
        default=30.0,
        help="seconds each long-poll waits for a new event, 1 to 60 (default: %(default)s)",
    )
    client_options(follow, _events_follow)

    webhooks = commands.add_parser("webhooks", help="inspect and drive webhooks (client)")
    hook_commands = webhooks.add_subparsers(
        dest="webhooks_command", required=True, metavar="ACTION"
    )
    listing = hook_commands.add_parser(
        "list", help="list the webhook subscriptions with their health, one JSON line each"
    )
    client_options(listing, _webhooks_list)
    deliveries = hook_commands.add_parser(
        "deliveries", help="a subscription's deliveries with their attempts, one JSON line each"
    )
    deliveries.add_argument("id", help="the webhook's id (webhooks list)")
    deliveries.add_argument(
        "--status", choices=_DELIVERY_STATUSES, help="only deliveries in this status"
    )
    deliveries.add_argument(
        "--limit",
        type=int,
        default=50,
        help="how many deliveries to list, 1 to 1000 (default: %(default)s)",
    )
    client_options(deliveries, _webhooks_deliveries)
    retry = hook_commands.add_parser(
        "retry", help="deliver one delivery again now (a dead, failed or succeeded one)"
    )
    retry.add_argument("id", help="the webhook's id")
    retry.add_argument("delivery_id", metavar="DELIVERY_ID", help="the delivery's id")
    client_options(retry, _webhooks_retry)
    replay = hook_commands.add_parser(
        "replay",
        help="deliver every matching event of a time window again (same webhook-ids)",
    )
    replay.add_argument("id", help="the webhook's id")
    replay.add_argument(
        "--since", required=True, type=_moment, metavar="TIME", help="RFC 3339, e.g. "
        "2027-01-31T12:00:00Z: events from then on"
    )  # fmt: skip
    replay.add_argument(
        "--until", type=_moment, metavar="TIME", help="RFC 3339: events until then (default: now)"
    )
    client_options(replay, _webhooks_replay)


def _moment(value: str) -> str:
    """The time as given (the API reads RFC 3339), once it is known to be one."""
    rfc3339(value)
    return value


# -- events follow -------------------------------------------------------------------------------


async def _events_follow(session: aiohttp.ClientSession, url: str, args: argparse.Namespace) -> int:
    if not 1 <= args.wait <= 60:
        raise ClientError("--wait must be 1 to 60 seconds")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
        except (ValueError, RuntimeError):  # not the main thread (run in-process by a test)
            pass
    follower = asyncio.create_task(_follow(session, url, args))
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({follower, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        for task in (follower, stopped):
            task.cancel()
        await asyncio.gather(follower, stopped, return_exceptions=True)
    if follower.done() and not follower.cancelled() and follower.exception() is not None:
        raise follower.exception()  # type: ignore[misc]
    cursor = getattr(args, "cursor", None)
    hint = f"; continue with --after {cursor}" if cursor else ""
    print(f"stopped{hint}", file=sys.stderr)
    return 0


async def _follow(session: aiohttp.ClientSession, url: str, args: argparse.Namespace) -> None:
    args.cursor = args.after
    pause = 1.0
    # a long-poll may take --wait seconds before its answer, and then some
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=args.wait + 30)
    while True:
        params = {"wait": f"{args.wait:g}", "limit": "100"}
        if args.cursor:
            params["after"] = args.cursor
        if args.types:
            params["type"] = ",".join(args.types)
        try:
            async with session.get(
                f"{url}/api/v1/events", params=params, timeout=timeout
            ) as response:
                await _check(response)
                page = await response.json()
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            print(f"connector: cannot reach {url} ({exc or type(exc).__name__}); "
                  f"trying again in {pause:g} s", file=sys.stderr)  # fmt: skip
            await asyncio.sleep(pause)
            pause = min(pause * 2, _RECONNECT_MAX)
            continue
        pause = 1.0
        for event in page["items"]:
            sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()
        args.cursor = page.get("nextCursor") or args.cursor


# -- webhooks ------------------------------------------------------------------------------------


def _hook(url: str, webhook_id: str) -> str:
    return f"{url}/api/v1/webhooks/{quote(webhook_id, safe='')}"


async def _webhooks_list(session: aiohttp.ClientSession, url: str, args: argparse.Namespace) -> int:
    cursor: str | None = None
    while True:
        params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
        async with session.get(f"{url}/api/v1/webhooks", params=params) as response:
            await _check(response)
            page: dict[str, Any] = await response.json()
        for item in page["items"]:
            print(json.dumps(item))
        cursor = page.get("nextCursor")
        if not cursor:
            return 0


async def _webhooks_deliveries(
    session: aiohttp.ClientSession, url: str, args: argparse.Namespace
) -> int:
    if not 1 <= args.limit <= 1000:
        raise ClientError("--limit must be 1 to 1000")
    left, cursor = args.limit, None
    while left > 0:
        params = {"limit": str(min(left, 100))}
        if args.status:
            params["status"] = args.status
        if cursor:
            params["cursor"] = cursor
        async with session.get(_hook(url, args.id) + "/deliveries", params=params) as response:
            await _check(response)
            page: dict[str, Any] = await response.json()
        for item in page["items"]:
            print(json.dumps(item))
        left -= len(page["items"])
        cursor = page.get("nextCursor")
        if not cursor or not page["items"]:
            break
    return 0


async def _webhooks_retry(
    session: aiohttp.ClientSession, url: str, args: argparse.Namespace
) -> int:
    address = _hook(url, args.id) + f"/deliveries/{quote(args.delivery_id, safe='')}/retry"
    async with session.post(address) as response:
        await _check(response)
        print(json.dumps(await response.json(), indent=2))
    return 0


async def _webhooks_replay(
    session: aiohttp.ClientSession, url: str, args: argparse.Namespace
) -> int:
    body = {"since": args.since, **({"until": args.until} if args.until else {})}
    async with session.post(_hook(url, args.id) + "/replay", json=body) as response:
        await _check(response)
        result = await response.json()
    print(json.dumps(result))
    print(f"{result['events']} event(s) will be delivered again", file=sys.stderr)
    return 0
