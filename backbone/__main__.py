"""``python -m backbone --host H --port P --data-dir DIR [limits]`` (see ``--help``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from backbone.options import add_limit_options, limits_from
from backbone.server import run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="backbone", description="Reference platform server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--data-dir", type=Path, default=Path("./backbone-data"))
    add_limit_options(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run(args.host, args.port, args.data_dir, **limits_from(args))


if __name__ == "__main__":
    main()
