"""The ``overture`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from overture_runtime.config import SERVICES

from . import cmd_events, cmd_journeys, cmd_rules, cmd_runs

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    from .serve import run

    run(args.service)
    return 0


def _dev(args: argparse.Namespace) -> int:
    from .dev import run_dev

    return run_dev(data_dir=args.data_dir)


def parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--token", default=None, help="bearer token (default: $OVERTURE_TOKEN, then .overture/dev.json)")
    root = argparse.ArgumentParser(prog="overture", description="Overture: a marketing-automation rules engine.")
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("serve", help="run one service in this process")
    p.add_argument("service", choices=SERVICES)
    p.set_defaults(func=_serve)
    p = sub.add_parser("dev", help="run all four services locally, on embedded defaults")
    p.add_argument("--data-dir", default=".overture", help="where dev data, mail and the dev token are kept")
    p.set_defaults(func=_dev)
    for module in (cmd_rules, cmd_journeys, cmd_events, cmd_runs):
        module.add_commands(sub, common)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
