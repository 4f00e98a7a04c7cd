"""Benchmark of the `overture` command's start-up: the wall time of
`overture --help`, a process start that does nothing but parse arguments.

    .venv/bin/python bench/cli_help.py [--runs 20]

1. `overture --help` (the installed console script, as a user runs it), and
   `overture events send --help`: median and p90 of N runs. Goal: --help
   under 0.3 s.
2. The baseline, in the same run: `python -c pass` on the same interpreter
   (the floor of any Python command), and the ratio.
3. A command that calls a service, against a port where nothing listens:
   what a call costs before the network (grpc and the stubs, no runtime).

Each run is a fresh process, so nothing is cached in memory between runs
(the OS file cache is warm after the first: a cold start is slower).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from common import show  # type: ignore[import-not-found]


def _overture() -> list[str]:
    script = Path(sys.executable).with_name("overture")
    return [str(script)] if script.exists() else [sys.executable, "-m", "overture_cli.main"]


def wall_times(argv: Sequence[str], *, runs: int, env: Mapping[str, str] | None = None) -> list[float]:
    """Seconds each of *runs* fresh runs of *argv* took, after one warm-up run."""
    environment = {**os.environ, **(env or {})}
    times = []
    for i in range(runs + 1):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment, check=False)
        if i:
            times.append(time.perf_counter() - start)
    return times


def figures(times: Sequence[float]) -> dict[str, object]:
    """Median and p90 of *times*, in milliseconds."""
    ordered = sorted(times)
    return {"median ms": statistics.median(ordered) * 1000, "p90 ms": ordered[int(0.9 * (len(ordered) - 1))] * 1000}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs of each command (median of these)")
    args = parser.parse_args()
    overture = _overture()
    baseline = figures(wall_times([sys.executable, "-c", "pass"], runs=args.runs))
    show(f"Baseline: {Path(sys.executable).name} -c pass ({args.runs} runs)", baseline)
    for title, argv in [("overture --help", ["--help"]), ("overture events send --help", ["events", "send", "--help"])]:
        measured = figures(wall_times([*overture, *argv], runs=args.runs))
        ratio = float(measured["median ms"]) / float(baseline["median ms"])  # type: ignore[arg-type]
        show(f"{title} ({args.runs} runs; goal for --help: under 300 ms)", {**measured, "x baseline (median)": ratio})
    unreachable = {"OVERTURE_TOKEN": "bench", "OVERTURE_ORCHESTRATOR_ADDRESS": f"127.0.0.1:{_closed_port()}"}
    measured = figures(wall_times([*overture, "runs", "list"], runs=args.runs, env=unreachable))
    ratio = float(measured["median ms"]) / float(baseline["median ms"])  # type: ignore[arg-type]
    show(f"overture runs list, nothing listening ({args.runs} runs): a call's cost before the network", {**measured, "x baseline (median)": ratio})


if __name__ == "__main__":
    main()
