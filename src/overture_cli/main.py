"""The ``overture`` command line.

Building the parser imports nothing but the standard library: each command
imports grpc, the stubs and the service code it needs when it runs, so
``overture --help`` (and a typo's usage message) answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import cmd_approvals, cmd_deliveries, cmd_events, cmd_journeys, cmd_rules, cmd_runs
from .client import SERVICES
from .output import CliError, print_error

__all__ = ["main", "parser"]


def _serve(args: argparse.Namespace) -> int:
    from .serve import run, run_console

    if args.service == "console":
        run_console()
    else:
        run(args.service)
    return 0


def _dev(args: argparse.Namespace) -> int:
    from .dev import run_dev

    return run_dev(data_dir=args.data_dir)


_JSON_HELP = "print the result as JSON (stable: proto field names, sorted keys) instead of text"


def parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    # --json is accepted before the command (overture --json runs list) and after it (overture runs list --json);
    # SUPPRESS keeps a subcommand's parser from resetting what the root parser read.
    fmt = argparse.ArgumentParser(add_help=False)
    fmt.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=_JSON_HELP)
    common = argparse.ArgumentParser(add_help=False, parents=[fmt])
    common.add_argument("--token", default=None, help="bearer token (default: $OVERTURE_TOKEN, then .overture/dev.json)")
    root = argparse.ArgumentParser(prog="overture", description="Overture: a marketing-automation rules engine.")
    root.add_argument("--json", action="store_true", default=False, help=_JSON_HELP)
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("serve", help="run one service (or the web console) in this process")
    p.add_argument("service", choices=(*SERVICES, "console"))
    p.set_defaults(func=_serve)
    p = sub.add_parser("dev", help="run all four services locally, on embedded defaults")
    p.add_argument("--data-dir", default=".overture", help="where dev data, mail and the dev token are kept")
    p.set_defaults(func=_dev)
    for module in (cmd_rules, cmd_journeys, cmd_events, cmd_runs, cmd_approvals, cmd_deliveries):
        module.add_commands(sub, common, fmt)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as error:
        print_error(error, as_json=args.json)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
