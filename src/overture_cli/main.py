"""The ``overture`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from overture_runtime.config import SERVICES

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="overture", description="Overture: a marketing-automation rules engine.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run one service")
    serve.add_argument("service", choices=SERVICES)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        from .serve import run

        run(args.service)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
