"""The HTTP sink of the connectors benchmark, in its own process.

    .venv/bin/python bench/baselines/http_sink.py --port N --out FILE

A bare asyncio HTTP/1.1 server on 127.0.0.1 that answers every request
``204 No Content`` on a kept-alive connection and appends one line per
request to FILE: its ``webhook-id`` header (or ``x-idempotency-key``; empty
if absent). Nothing else is kept. It prints ``serving <port>`` once it
listens, and flushes FILE every 50 ms and on SIGTERM.

Requests are read with ``Content-Length`` only (what httpx sends for a body
of bytes) and parsed by hand: at thousands of requests per second the sink
must not be what the benchmark measures, and both the service and the raw
httpx baseline post to the same sink.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import TextIO

_ANSWER = b"HTTP/1.1 204 No Content\r\nServer: bench-sink\r\n\r\n"
_KEYS = (b"webhook-id:", b"x-idempotency-key:")


class _Connection(asyncio.Protocol):
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            length = key = b""
            for line in head.split(b"\r\n")[1:]:
                lower = line[:20].lower()
                if lower.startswith(b"content-length:"):
                    length = line[15:].strip()
                for name in _KEYS:
                    if lower.startswith(name):
                        key = line[len(name):].strip()
            size = int(length or 0)
            if len(self.buffer) < end + 4 + size:
                return
            self.buffer = self.buffer[end + 4 + size:]
            self.out.write(key.decode("ascii", "replace") + "\n")
            assert self.transport is not None
            self.transport.write(_ANSWER)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with open(args.out, "w", buffering=1 << 16) as out:  # noqa: ASYNC230 - opened once, before serving
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Connection(out), "127.0.0.1", args.port, backlog=1024)
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
