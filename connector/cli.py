"""The ``connector`` command: serve, backbone, demo, keys, and client commands over REST."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from connector import logs
from connector.cli_args import rfc3339
from connector.settings import SCOPES, ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from connector.services.api_keys import ApiKeyService, KeyInfo

log = logging.getLogger("connector")

T = TypeVar("T")

_SERVER_ENVIRONMENT = """\
environment variables:
  CONNECTOR_CONFIG      config file for serve and keys create (as --config)
  CONNECTOR_<SECTION>__<KEY>  any config key, e.g. CONNECTOR_SERVER__PORT=9000
  CONNECTOR_MASTER_KEY  base64 of the 32-byte master key, instead of <data_dir>/master.key
  CONNECTOR_LOG_LEVEL   DEBUG, INFO (default; one access-log line per request), WARNING, ERROR
  CONNECTOR_LOG__FORMAT text (default) or json: one JSON object per log line (serve, backbone)
"""
_ENVIRONMENT = (
    _SERVER_ENVIRONMENT
    + """\
  CONNECTOR_URL         connector URL for the client commands (as --url)
  CONNECTOR_API_KEY     API key for the client commands (as --api-key)
"""
)

_KEYS_CREATE_HINT = "connector keys create --name NAME --scope '*' (add --config as for serve)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        logs.configure()  # text; serve and backbone then apply their [log]
        result: int = args.func(args)
        return result
    except ConfigError as exc:
        print(f"connector: {exc}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"connector: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="connector",
        description="End-to-end encrypted messages and files between companies.",
        epilog=_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from connector.api.health import connector_version

    parser.add_argument("--version", action="version", version=f"connector {connector_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the API and the scheduler",
        epilog=_SERVER_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _config_option(serve)
    serve.set_defaults(func=_cmd_serve)

    backbone = commands.add_parser("backbone", help="run the reference platform server")
    backbone.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    backbone.add_argument(
        "--port", type=int, default=8090, help="port to listen on (default: %(default)s)"
    )
    backbone.add_argument(
        "--data-dir",
        type=Path,
        default=Path("./backbone-data"),
        help="folder for the backbone's database and files (default: %(default)s)",
    )
    from backbone.options import add_limit_options

    add_limit_options(backbone)
    backbone.set_defaults(func=_cmd_backbone)

    demo = commands.add_parser("demo", help="two connectors and a backbone, end to end")
    demo.add_argument(
        "--size-mib", type=float, default=5.0, help="size of the demo file (default: %(default)s)"
    )
    demo.set_defaults(func=_cmd_demo)

    keys = commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = key_commands.add_parser(
        "create",
        help="make a new API key and print it once",
        epilog=_SERVER_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _config_option(create)
    create.add_argument(
        "--name", required=True, help="a name for the key, e.g. the system using it"
    )
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=SCOPES,
        dest="scopes",
        metavar="SCOPE",
        help=f"what the key may do; repeat for several: {', '.join(SCOPES)}",
    )
    expiry = create.add_mutually_exclusive_group()
    expiry.add_argument(
        "--expires-in",
        type=_seconds,
        metavar="SECONDS",
        help="the key stops working this many seconds from now (default: never)",
    )
    expiry.add_argument(
        "--expires-at",
        type=_moment,
        metavar="TIME",
        help="the key stops working at this RFC 3339 time with an offset, "
        "e.g. 2027-01-31T12:00:00Z (default: never)",
    )
    create.set_defaults(func=_cmd_keys_create)

    listing = key_commands.add_parser(
        "list",
        help="list the API keys: name, scopes, source, created, expires, revoked",
        description="List every API key the connector knows (config, cli and bootstrap keys, "
        "expired and revoked ones included). Neither a key nor its hash is ever shown.",
        epilog=_SERVER_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _config_option(listing)
    listing.add_argument("--json", action="store_true", help="one JSON object per key and line")
    listing.set_defaults(func=_cmd_keys_list)

    revoke = key_commands.add_parser(
        "revoke",
        help="revoke an API key by name or id",
        description="Revoke an API key: every running connector on this database refuses it "
        "(401) within 2 seconds. Keys from the config file (api.keys) are removed from the "
        "config instead.",
        epilog=_SERVER_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _config_option(revoke)
    revoke.add_argument("key", metavar="NAME-or-ID", help="the key's name, or its id (keys list)")
    revoke.set_defaults(func=_cmd_keys_revoke)

    from connector.client_cli import add_client_commands

    add_client_commands(commands)
    return parser


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ["CONNECTOR_CONFIG"])
        if os.environ.get("CONNECTOR_CONFIG")
        else None,
        help="TOML config file (default: $CONNECTOR_CONFIG, else built-in defaults); any key "
        "can also be set by CONNECTOR_<SECTION>__<KEY>, e.g. CONNECTOR_SERVER__PORT=9000",
    )


# -- serve ---------------------------------------------------------------------------------------


class StartupError(Exception):
    """``serve`` cannot start: one line says why (the data dir is in use, the port is taken)."""


def _cmd_serve(args: argparse.Namespace) -> int:
    from connector.data_dir import DataDirLocked, data_dir_lock, prepare_data_dir

    settings = load_settings(args.config)
    logs.configure(settings.log)
    prepare_data_dir(settings)
    try:
        # Before anything starts (scheduler, embedded backbone): one clear line, exit 1.
        with data_dir_lock(settings.data_dir):
            _check_port_free(settings.server.host, settings.server.port)
            _run(serve(settings))
    except DataDirLocked as exc:
        raise StartupError(str(exc)) from None
    return 0


def _check_port_free(host: str, port: int) -> None:
    """Fail early, naming the port, when another program already listens on it."""
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise StartupError(f"cannot listen on {host}:{port}: {exc}") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise _port_error(host, port, exc) from None


def _port_error(host: str, port: int, exc: OSError) -> StartupError:
    if exc.errno == errno.EADDRINUSE:
        return StartupError(
            f"port {port} on {host} is in use by another program "
            "(set server.port, or CONNECTOR_SERVER__PORT)"
        )
    return StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


def _run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop where it is installed: about 10 % more requests a second."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - not installed on this platform
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


async def serve(settings: Settings, *, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM or SIGINT, then stop taking requests, finish those in flight, close."""
    from connector.api.app import create_app
    from connector.api.appkeys import RUNTIME

    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=30)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.server.host, settings.server.port, backlog=1024)
        try:
            await site.start()
        except OSError as exc:  # taken since the early check
            raise _port_error(settings.server.host, settings.server.port, exc) from None
        runtime = app[RUNTIME]
        host, port = runner.addresses[0][:2]
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        runtime.delivery.listening_at(url)
        print(f"Connector listening on {url}", flush=True)
        print(f"  address:   {runtime.address}", flush=True)
        print(f"  platform:  {runtime.platform_url}", flush=True)
        print(f"  data dir:  {settings.data_dir.resolve()}", flush=True)
        print(f"  API docs:  {url}/api/docs", flush=True)
        if runtime.bootstrap_key:
            print(f"  API key:   {runtime.bootstrap_key}", flush=True)
            print(
                "  (made because no API key exists; header X-API-KEY. Shown only now, and it\n"
                "   stops working once any other key exists: api.keys or `connector keys create`)",
                flush=True,
            )
        else:
            print(f"  API key:   make one with: {_KEYS_CREATE_HINT}", flush=True)
        for made in runtime.new_webhook_secrets:
            print(f"  webhook:   {made.url}", flush=True)
            print(f"    secret:  {made.secret}", flush=True)
            print(
                "    (made because [[webhooks]] names no secret; the endpoint verifies requests\n"
                '     with it. Shown only now: to choose it yourself, set secret = "whsec_...")',
                flush=True,
            )
        shown_key = runtime.bootstrap_key or "<your key>"
        print(
            f"  try:       curl -H 'X-API-KEY: {shown_key}' {url}/api/v1/account/identity",
            flush=True,
        )
        if ready is not None:
            ready.set()
        await _until_signalled()
        print("Shutting down...", flush=True)
    finally:
        await runner.cleanup()


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


# -- backbone ------------------------------------------------------------------------------------


def _cmd_backbone(args: argparse.Namespace) -> int:
    from backbone.options import limits_from
    from backbone.server import run

    logs.configure(logs.from_environment())
    run(args.host, args.port, args.data_dir, **limits_from(args))
    return 0


# -- demo ----------------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from connector.demo import run_demo

    if "CONNECTOR_LOG_LEVEL" not in os.environ:
        logging.getLogger().setLevel(logging.WARNING)  # the demo prints its own steps

    return _run(run_demo(size_mib=args.size_mib))


# -- keys ----------------------------------------------------------------------------------------


def _seconds(value: str) -> int:
    try:
        seconds = int(value)
    except ValueError:
        seconds = 0
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of seconds above 0")
    return seconds


def _moment(value: str) -> datetime:
    return rfc3339(value).astimezone(UTC)


def _cmd_keys_create(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    expires_at: datetime | None = args.expires_at
    if args.expires_in is not None:
        expires_at = datetime.now(UTC) + timedelta(seconds=args.expires_in)
    if expires_at is not None and expires_at <= datetime.now(UTC):
        print(f"connector: --expires-at {_when(expires_at)} is in the past", file=sys.stderr)
        return 2
    key = _run(
        _with_keys(
            settings, lambda keys: keys.create(args.name, args.scopes, expires_at=expires_at)
        )
    )
    print(key)
    until = f", valid until {_when(expires_at)}" if expires_at else ""
    print(
        f"Created API key '{args.name}' with scopes {', '.join(args.scopes)}{until}. "
        "It is shown only now; only its hash is stored.",
        file=sys.stderr,
    )
    return 0


def _cmd_keys_list(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)

    async def listed(keys: ApiKeyService) -> tuple[list[KeyInfo], tuple[list[str], list[str]]]:
        return await keys.keys(), await keys.config_drift(settings.api.keys)

    infos, (pending, stale) = _run(_with_keys(settings, listed))
    for name in pending:  # not rows: a key not stored yet has no id, and none is made here
        print(
            f"note: config key '{name}' (api.keys) is not stored yet; a connector started with "
            "this config adds it",
            file=sys.stderr,
        )
    for name in stale:
        print(
            f"note: config key '{name}' is no longer in the config file; a connector started "
            "with this config removes it",
            file=sys.stderr,
        )
    if args.json:
        for info in infos:
            print(json.dumps(_key_json(info)))
        return 0
    now = datetime.now(UTC)
    rows = [("ID", "NAME", "SCOPES", "SOURCE", "CREATED", "EXPIRES", "REVOKED")]
    for info in infos:
        expires = _when(info.expires_at) if info.expires_at else "never"
        if info.expires_at and info.expires_at <= now:
            expires += " (expired)"
        rows.append(
            (
                str(info.id),
                info.name,
                ",".join(info.scopes),
                info.source,
                _when(info.created_at),
                expires,
                _when(info.revoked_at) if info.revoked_at else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    if not infos:
        print(f"no API keys yet; make one with: {_KEYS_CREATE_HINT}", file=sys.stderr)
    return 0


def _cmd_keys_revoke(args: argparse.Namespace) -> int:
    from connector.services.api_keys import ApiKeyError

    settings = load_settings(args.config)
    try:
        info, revoked = _run(
            _with_keys(settings, lambda keys: keys.revoke(args.key, settings.api.keys))
        )
    except ApiKeyError as exc:
        print(f"connector: {exc}", file=sys.stderr)
        return 1
    if revoked:
        print(
            f"Revoked API key '{info.name}' (id {info.id}); running connectors refuse it "
            "within 2 seconds."
        )
    else:
        assert info.revoked_at is not None
        print(
            f"API key '{info.name}' (id {info.id}) was revoked already, "
            f"at {_when(info.revoked_at)}."
        )
    return 0


def _key_json(info: KeyInfo) -> dict[str, object]:
    return {
        "id": info.id,
        "name": info.name,
        "scopes": list(info.scopes),
        "source": info.source,
        "createdAt": _when(info.created_at),
        "expiresAt": _when(info.expires_at) if info.expires_at else None,
        "revokedAt": _when(info.revoked_at) if info.revoked_at else None,
    }


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _with_keys(settings: Settings, action: Callable[[ApiKeyService], Awaitable[T]]) -> T:
    """Run ``action`` on the API keys in the connector's database (migrated first)."""
    from connector.crypto.at_rest import load_or_create_master_key
    from connector.data_dir import prepare_data_dir
    from connector.runtime import MASTER_KEY_ENV
    from connector.services.api_keys import ApiKeyService
    from storage.engine import create_engine, create_sessions
    from storage.migrate import upgrade

    prepare_data_dir(settings)
    master_key = load_or_create_master_key(settings.data_dir, os.environ.get(MASTER_KEY_ENV))
    engine = create_engine(settings.database_url)
    try:
        await upgrade(engine)
        return await action(ApiKeyService(create_sessions(engine), master_key))
    finally:
        await engine.dispose()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
