"""The raw floor of the end-to-end benchmark: one process doing only the
I/O that no implementation of "an event becomes an email, durably and
once" can skip, batched as well as it goes.

    .venv/bin/python bench/baselines/raw_floor.py --dsn postgresql://... --redis URL --ns NS --smtp-port N --events N --tag PREFIX

Per batch of events: one INSERT of the events (unnest, ON CONFLICT DO
NOTHING: the dedupe), one pipelined XADD per event, and concurrently a
reader that takes them back with XREADGROUP, inserts the runs in one
statement (unique per subject and event, the once-key), sends each email
over a small pool of SMTP connections held open (aiosmtplib), then XACKs
the batch. No rules, no templates beyond string formatting, no RPCs. It
prints one JSON line: first and last publish times (monotonic), the emails
it sent, its own CPU seconds and those of its two PostgreSQL backends.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import time
from email.utils import formatdate
from pathlib import Path

import aiosmtplib
import asyncpg
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workload  # beside this file, found through the path set just above

SCHEMA = """
CREATE TABLE IF NOT EXISTS floor_events (
    tenant text NOT NULL, event_id text NOT NULL, event_type text NOT NULL, subject_id text NOT NULL,
    occurred_at timestamptz NOT NULL, payload bytea NOT NULL, PRIMARY KEY (tenant, event_id));
CREATE TABLE IF NOT EXISTS floor_runs (
    tenant text NOT NULL, run_id text NOT NULL, subject_id text NOT NULL, event_id text NOT NULL, state text NOT NULL,
    create_time timestamptz NOT NULL, PRIMARY KEY (tenant, run_id), UNIQUE (tenant, subject_id, event_id));
"""


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of *pid* (this machine's PostgreSQL backend of a connection)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _message(event_id: str, index: int) -> bytes:
    key = f"{event_id}:{workload.STEP_ID}"
    first = f"Subscriber{index}"
    return (f"From: {workload.SENDER}\r\nTo: {workload.address(index)}\r\n"
            f"Subject: {workload.SUBJECT_TEMPLATE.format(first_name=first, event_id=event_id)}\r\n"
            f"Date: {formatdate(usegmt=True)}\r\nMessage-ID: <{key}@example.com>\r\nX-Overture-Key: {key}\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{workload.TEXT_TEMPLATE.format(first_name=first, plan='pro')}").encode()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--ns", required=True)
    parser.add_argument("--smtp-port", type=int, required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--profiles", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--connections", type=int, default=8, help="SMTP connections held open")
    args = parser.parse_args()
    stream, group = f"{args.ns}:floor:events", "floor"
    db = await asyncpg.create_pool(args.dsn, min_size=2, max_size=2)
    r = aioredis.Redis.from_url(args.redis)
    await db.execute(SCHEMA)
    await r.xgroup_create(stream, group, id="0", mkstream=True)
    smtp = [aiosmtplib.SMTP(hostname="127.0.0.1", port=args.smtp_port, timeout=10) for _ in range(args.connections)]
    await asyncio.gather(*(c.connect() for c in smtp))
    sent = 0
    queue: asyncio.Queue[tuple[str, int] | None] = asyncio.Queue(maxsize=4 * args.batch)

    async def mailer(client: aiosmtplib.SMTP) -> None:
        nonlocal sent
        while (item := await queue.get()) is not None:
            event_id, index = item
            await client.sendmail("bench@example.com", [workload.address(index)], _message(event_id, index))
            sent += 1
            queue.task_done()
        queue.task_done()

    async def publish() -> None:
        now = dt.datetime.now(dt.UTC)
        for start in range(0, args.events, args.batch):
            ids = [f"{args.tag}{i:07d}" for i in range(start, min(start + args.batch, args.events))]
            subjects = [workload.subject_id(int(i[len(args.tag):]) % args.profiles) for i in ids]
            payloads = [json.dumps({"event_id": i, "subject_id": s, "plan": "pro"}).encode() for i, s in zip(ids, subjects, strict=True)]
            fresh = await db.fetch(
                "INSERT INTO floor_events SELECT 'bench', e, $3, s, $4, p FROM unnest($1::text[], $2::text[], $5::bytea[]) AS t(e, s, p) "
                "ON CONFLICT DO NOTHING RETURNING event_id", ids, subjects, workload.EVENT_TYPE, now, payloads)
            pipe = r.pipeline(transaction=False)
            for row, payload in zip(fresh, payloads, strict=False):
                pipe.xadd(stream, {"id": row["event_id"], "p": payload})
            await pipe.execute()

    async def consume() -> None:
        done = 0
        while done < args.events:
            read = await r.xreadgroup(group, "floor", {stream: ">"}, count=args.batch, block=1000)
            if not read:
                continue
            entries = read[0][1]
            events = [json.loads(fields[b"p"]) for _, fields in entries]
            now = dt.datetime.now(dt.UTC)
            await db.execute(
                "INSERT INTO floor_runs SELECT 'bench', e || ':run', s, e, 'sent', $3 FROM unnest($1::text[], $2::text[]) AS t(e, s) "
                "ON CONFLICT DO NOTHING", [e["event_id"] for e in events], [e["subject_id"] for e in events], now)
            for e in events:
                await queue.put((e["event_id"], int(e["subject_id"].rsplit("-", 1)[1])))
            await queue.join()
            await r.xack(stream, group, *[entry_id for entry_id, _ in entries])
            done += len(entries)

    mailers = [asyncio.create_task(mailer(c)) for c in smtp]
    first = time.monotonic()
    await asyncio.gather(publish(), consume())
    last = time.monotonic()
    for _ in mailers:
        await queue.put(None)
    await asyncio.gather(*mailers)
    for c in smtp:
        await c.quit()
    await r.delete(stream)
    await r.aclose()
    # The PostgreSQL backends' CPU, read while they still exist: they were opened for this run.
    pg_cpu = 0.0
    async with db.acquire() as a, db.acquire() as b:
        for conn in (a, b):
            pg_cpu += _cpu_seconds(await conn.fetchval("SELECT pg_backend_pid()"))
    await db.close()
    print(json.dumps({"first": first, "last": last, "sent": sent, "cpu": time.process_time(), "pg_cpu": pg_cpu}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
