"""The SMTP sink of the end-to-end benchmark, in its own process.

    .venv/bin/python bench/baselines/smtp_sink.py --port N --out FILE

An aiosmtpd server on 127.0.0.1 that accepts every message and appends one
line per message to FILE (emptied first): the arrival time (``time.monotonic()``, the
system-wide CLOCK_MONOTONIC, so comparable with the benchmark's own
clock), the idempotency key header (``X-Overture-Key``, or
``X-Idempotency-Key``; empty if absent) and the event tag the benchmark
puts in the subject (``[ev:<event id>]``; empty if absent). Nothing else is
kept: no addresses, no bodies. It prints ``serving <port>`` once it listens,
and flushes FILE every 50 ms and on SIGTERM.

Headers are scanned as bytes, not parsed by the email package: at a few
thousand messages per second the sink must not be what the benchmark
measures.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import time
from typing import Any, TextIO

from aiosmtpd.smtp import SMTP

_TAG = re.compile(rb"\[ev:([^\]\s]+)\]")
_KEYS = (b"x-overture-key:", b"x-idempotency-key:")


def scan(content: bytes) -> tuple[str, str]:
    """The idempotency key and the subject's event tag of one message (empty when absent)."""
    head = content.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    head = head.replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ").replace(b"\n ", b" ")  # unfold
    key = tag = ""
    for line in head.splitlines():
        lower = line[:24].lower()
        for name in _KEYS:
            if lower.startswith(name):
                key = line[len(name):].strip().decode("ascii", "replace")
        if lower.startswith(b"subject:") and (found := _TAG.search(line)):
            tag = found.group(1).decode("ascii", "replace")
    return key, tag


class Recorder:
    """The aiosmtpd handler: one line per message, nothing personal."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content: bytes = envelope.original_content or envelope.content
        key, tag = scan(content)
        self.out.write(f"{time.monotonic():.6f}\t{key}\t{tag}\n")
        self.count += 1
        return "250 2.0.0 accepted"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with open(args.out, "w", buffering=1 << 16) as out:  # noqa: ASYNC230 - opened once, before serving
        recorder = Recorder(out)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SMTP(recorder, hostname="bench-sink"), "127.0.0.1", args.port, backlog=1024)
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        print(f"serving {args.port}", flush=True)

        async def flush() -> None:
            while True:
                await asyncio.sleep(0.05)
                out.flush()

        flusher = asyncio.create_task(flush())
        await stop.wait()
        flusher.cancel()
        server.close()
        out.flush()


if __name__ == "__main__":
    asyncio.run(main())
