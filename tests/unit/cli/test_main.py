"""The ``overture`` entry point answers help and usage without importing grpc,
protobuf, the shared runtime or any service, and a remote command without
the runtime or the storage libraries."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

import pytest

from overture_cli.main import parser
from overture_runtime.testing import free_port

HEAVY = ("grpc", "google.protobuf", "google.rpc", "overture", "overture_runtime", "overture_rules", "overture_orchestrator",
         "overture_ingest", "overture_connectors", "sqlalchemy", "redis", "structlog", "pydantic", "yaml", "asyncio")
STORAGE = ("overture_runtime", "sqlalchemy", "asyncpg", "redis", "alembic", "structlog", "pydantic", "pydantic_settings")


def loaded_after(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Run ``overture *argv`` in a fresh interpreter; its exit code and the top-level packages it imported."""
    script = textwrap.dedent(f"""
        import json, sys
        from overture_cli.main import main
        try:
            code = main({argv!r})
        except SystemExit as stop:
            code = stop.code
        sys.stdout.flush()
        print(json.dumps([code, sorted(sys.modules)]), file=sys.stderr)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})
    code, modules = json.loads(done.stderr.strip().splitlines()[-1])
    return code, modules


def _imported(modules: list[str], roots: tuple[str, ...]) -> list[str]:
    return sorted({m for m in modules if any(m == r or m.startswith(r + ".") for r in roots)})


def _help_argvs() -> list[list[str]]:
    """``--help`` of the CLI, of each command group and of each command."""
    argvs: list[list[str]] = []

    def walk(p: argparse.ArgumentParser, prefix: list[str]) -> None:
        argvs.append([*prefix, "--help"])
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, [*prefix, name])

    walk(parser(), [])
    return argvs


@pytest.mark.parametrize("argv", _help_argvs(), ids=" ".join)
def test_help_imports_nothing_heavy(argv: list[str]) -> None:
    """`overture --help` and every command's --help load only the standard library and the CLI's own modules."""
    code, modules = loaded_after(argv)
    assert code == 0
    assert _imported(modules, HEAVY) == []


def test_a_usage_error_imports_nothing_heavy() -> None:
    """A mistyped command answers with its usage, having loaded nothing heavy."""
    code, modules = loaded_after(["rules", "pubilsh"])
    assert code == 2
    assert _imported(modules, HEAVY) == []


def test_a_remote_command_loads_neither_the_runtime_nor_storage() -> None:
    """A command that calls a service loads grpc and its stubs, but not the shared runtime, SQLAlchemy, Redis or pydantic."""
    address = f"127.0.0.1:{free_port()}"  # nothing listens: the call fails fast with UNAVAILABLE
    code, modules = loaded_after(["runs", "list"], env={"OVERTURE_TOKEN": "t", "OVERTURE_ORCHESTRATOR_ADDRESS": address})
    assert code == 1
    assert "grpc" in modules
    assert _imported(modules, STORAGE) == []
