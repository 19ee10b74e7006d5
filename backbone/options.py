"""The limits an operator sets on the command line, and the start-up line that shows them.

Used by ``connector backbone`` and ``python -m backbone`` alike. Each flag is a field of
:class:`backbone.context.Settings` (``--max-stored-bytes`` sets ``max_stored_bytes``); a flag
left out keeps the documented default (docs/protocol.md, *Limits*).
"""

from __future__ import annotations

import argparse
import dataclasses

from backbone.context import Settings

OPERATOR_LIMITS: dict[str, str] = {
    "max_envelope_bytes": "largest envelope body in bytes (413 envelope_too_large)",
    "max_page_bytes": "bytes of items in one inbox page (yet at least one item)",
    "max_stored_bytes": "bytes of files and envelopes per identity (507 insufficient_storage)",
    "envelopes_per_day": "new envelopes per sender in a rolling day (429 quota_exceeded)",
    "registrations_per_minute": "registrations per client IP and minute (429 rate_limited)",
    "max_recipients": "distinct recipients of one envelope (400 invalid_envelope)",
}
"""Settings field -> what it bounds, for ``--help``."""

LARGEST = 2**62
"""No limit is meant to be larger; keeps every value an exact float and an SQLite integer."""

_DEFAULTS = {field.name: field.default for field in dataclasses.fields(Settings)}


def positive_int(text: str) -> int:
    """An ``argparse`` type: a whole number from 1 to :data:`LARGEST`."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    if value > LARGEST:
        raise argparse.ArgumentTypeError(f"must be at most 2**62, not {text}")
    return value


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("limits", "per backbone; see docs/protocol.md, Limits")
    for name, bounds in OPERATOR_LIMITS.items():
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=positive_int,
            default=None,
            metavar="N",
            help=f"{bounds}; default {_DEFAULTS[name]}",
        )


def limits_from(args: argparse.Namespace) -> dict[str, int]:
    """The limits given on the command line, as ``create_app`` keyword arguments."""
    return {name: value for name in OPERATOR_LIMITS if (value := getattr(args, name)) is not None}


def describe_limits(settings: Settings) -> str:
    """Every effective limit on one line, for the start-up log."""
    values = (
        f"{field.name}={getattr(settings, field.name)}"
        for field in dataclasses.fields(settings)
        if field.name != "data_dir"
    )
    return "backbone limits: " + " ".join(values)
