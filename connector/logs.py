"""Logging for ``connector serve`` and ``connector backbone``: text for a terminal, or JSON lines.

:func:`configure` sets up the root logger once, from the ``[log]`` settings: ``format = "text"``
(the default, ``time LEVEL logger: message``) or ``"json"``, one object a line::

    {"time": "2026-01-02T03:04:05.678Z", "level": "INFO", "logger": "connector.access",
     "message": "GET /api/v1/messages 200 1.2ms", "request_id": "9f2c...", "method": "GET", ...}

A traceback is the field ``exc`` of its line (a JSON string: still one line).

Context: :func:`log_context` names what the code at hand works on (``request_id``,
``message_id``, ``delivery_id``) for every line logged inside it, this task and the tasks it
starts (a :class:`contextvars.ContextVar`); a call's own ``extra=`` adds fields to its line.
Neither ever holds message content or a secret: ids only.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal

from pydantic import ValidationError

from connector.settings import ConfigError, LogSettings

CONTEXT_FIELDS = ("request_id", "message_id", "delivery_id")
"""The context fields, in the order the text format appends them."""

LEVEL_ENV = "CONNECTOR_LOG_LEVEL"
"""The level for every command; for ``serve``, it overrides ``log.level``."""

_CONTEXT: ContextVar[Mapping[str, str]] = ContextVar(
    "connector_log_context", default=MappingProxyType({})
)
_STANDARD = frozenset(
    {
        *logging.LogRecord("", 0, "", 0, "", None, None).__dict__,
        "message",
        "asctime",
        "taskName",
    }
)
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_QUIET = {
    "aiohttp.access": logging.WARNING,  # ours is connector.access
    "apscheduler": logging.WARNING,
    "alembic": logging.WARNING,
}


@contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Every line logged inside the block carries ``fields`` (those not None)."""
    token = _CONTEXT.set({**_CONTEXT.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def current_context() -> Mapping[str, str]:
    """The fields :func:`log_context` set here."""
    return _CONTEXT.get()


class ContextFilter(logging.Filter):
    """Puts the context fields on each record (unless its ``extra=`` gave them already)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _CONTEXT.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: time, level, logger, message, then fields."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        line: dict[str, Any] = {
            "time": when.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_") and name not in line:
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, then the context fields as ``name=value``."""

    def __init__(self) -> None:
        super().__init__(_TEXT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        fields = [f"{n}={getattr(record, n)}" for n in CONTEXT_FIELDS if hasattr(record, n)]
        return " ".join([text, *fields])


def formatter(kind: Literal["text", "json"]) -> logging.Formatter:
    return JsonFormatter() if kind == "json" else TextFormatter()


def configure(settings: LogSettings | None = None) -> None:
    """The root logger writes to stderr in ``settings.format`` at ``settings.level``.

    ``CONNECTOR_LOG_LEVEL``, when set, decides the level. Called again, it replaces the handler
    it set before (``main`` sets up text first; ``serve`` then applies its ``[log]``). As
    ``logging.basicConfig``, it leaves a root logger that someone else set up alone (a test
    runner capturing logs, a program embedding the connector).
    """
    settings = settings or LogSettings()
    for name, level in _QUIET.items():
        logging.getLogger(name).setLevel(level)
    from connector.api.access_log import MalformedRequestFilter

    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server.filters):
        server.addFilter(MalformedRequestFilter())
    root = logging.getLogger()
    if any(not isinstance(h, _Handler) for h in root.handlers):
        return
    for old in list(root.handlers):
        root.removeHandler(old)
    handler = _Handler(sys.stderr)
    handler.setFormatter(formatter(settings.format))
    handler.addFilter(ContextFilter())
    root.addHandler(handler)
    root.setLevel(os.environ.get(LEVEL_ENV, "").upper() or settings.level)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure` installs (and may replace)."""


def from_environment() -> LogSettings:
    """``[log]`` from ``CONNECTOR_LOG__*`` alone, for commands that read no config file."""
    prefix = "CONNECTOR_LOG__"
    given = {k[len(prefix) :].lower(): v for k, v in os.environ.items() if k.startswith(prefix)}
    try:
        return LogSettings.model_validate(given)
    except ValidationError as exc:
        problems = (f"  log.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError("\n".join(["invalid configuration:", *problems])) from None
