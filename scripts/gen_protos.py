"""Generate the Python stubs of protos/ into gen/, reproducibly.

    python scripts/gen_protos.py          # regenerate gen/overture
    python scripts/gen_protos.py --check  # fail if gen/ is stale

The generated import path equals the proto path (``overture.ingest.v1``), so
nothing rewrites imports. Messages get ``.pyi`` stubs and gRPC stubs get
``_grpc.pyi`` stubs from mypy-protobuf. The versions of grpcio-tools,
protobuf and mypy-protobuf are pinned in pyproject.toml; the stubs are only
reproducible under those pins.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GEN = ROOT / "gen"
BIN = Path(sys.executable).parent


def generate(out: Path) -> None:
    """Run protoc over every .proto under protos/ into *out*."""
    import grpc_tools  # the well-known types ship inside grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"-I{PROTOS}", f"-I{include}",
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}", f"--grpc_python_out={out}",
        f"--mypy_out={out}", f"--mypy_grpc_out={out}",
        *files,
    ]
    done = subprocess.run(cmd, cwd=PROTOS, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"protoc failed:\n{done.stderr}")
    # Regular packages (not namespace packages) so that mypy and setuptools
    # see one unambiguous tree; py.typed marks the stubs as typed.
    for directory in [out / "overture", *(p for p in (out / "overture").rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()
    (out / "overture" / "py.typed").touch()


def _diff(a: Path, b: Path) -> list[str]:
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])
    stale = [*cmp.left_only, *cmp.right_only, *cmp.diff_files]
    for name in cmp.subdirs:
        stale += [f"{name}/{s}" for s in _diff(a / name, b / name)]
    return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if gen/ is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate(out)
        if args.check:
            stale = _diff(out / "overture", GEN / "overture")
            if stale:
                print("stale generated stubs; run `python scripts/gen_protos.py`:", *stale, sep="\n  ")
                return 1
            print("generated stubs are fresh")
            return 0
        shutil.rmtree(GEN / "overture", ignore_errors=True)
        shutil.copytree(out / "overture", GEN / "overture")
    print(f"generated stubs into {GEN / 'overture'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
