"""The Celery-style peer pipeline of the end-to-end benchmark: the obvious
alternative to Overture, with no durable event log and no audit.

Runs only in ``.bench-venv/`` (bench/e2e.py creates it and starts this);
Celery 5 on a Redis broker under its own key prefix, two prefork worker
processes. Per event, two tasks:

1. ``bench.dedupe``: ``SET NX`` on the event id; a new event enqueues 2.
2. ``bench.decide_and_send``: the profile from Redis, the consent check,
   the three rule-engine rules of ``workload.RULES``, a Lua frequency cap
   (per subject and calendar day), then an idempotent send: the key
   ``<event id>:send-welcome`` is claimed with ``SET NX`` before SMTP and
   released if the send fails. Each worker process keeps one SMTP
   connection open and reuses it.

    celery -A celery_pipeline worker --pool prefork --concurrency 2      (the workers)
    python celery_pipeline.py seed --profiles N                          (profiles into Redis)
    python celery_pipeline.py produce --events N --tag PREFIX --profiles N  (publish; prints JSON)

Configuration from the environment: ``BENCH_REDIS_URL``, ``BENCH_NS`` (the
key prefix of everything, broker included), ``BENCH_SMTP_PORT``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import smtplib
import sys
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

import redis
import rule_engine
from celery import Celery

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workload  # beside this file, found through the path set just above

REDIS_URL = os.environ["BENCH_REDIS_URL"]
NS = os.environ["BENCH_NS"]
SMTP_PORT = int(os.environ.get("BENCH_SMTP_PORT", "1025"))

app = Celery("bench", broker=REDIS_URL)
app.conf.update(
    broker_transport_options={"global_keyprefix": f"{NS}:"},
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    worker_enable_remote_control=False,  # no pidbox keys outside the prefix
    worker_send_task_events=False,
    worker_hijack_root_logger=False,
)

_redis = redis.Redis.from_url(REDIS_URL)  # redis-py resets its pool in each forked worker
_CAP = _redis.register_script("""
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if n > tonumber(ARGV[1]) then redis.call('DECR', KEYS[1]) return 0 end
return 1
""")
_RULES = [(rule_id, rule_engine.Rule(expression), effect) for rule_id, expression, effect in workload.RULES]
_smtp: smtplib.SMTP | None = None


def _send(message: EmailMessage) -> None:
    global _smtp
    for attempt in (1, 2):
        if _smtp is None:
            _smtp = smtplib.SMTP("127.0.0.1", SMTP_PORT, timeout=10)
        try:
            _smtp.send_message(message)
            return
        except (smtplib.SMTPServerDisconnected, OSError):
            _smtp = None
            if attempt == 2:
                raise


@app.task(name="bench.dedupe")
def dedupe(event: dict[str, str]) -> None:
    if _redis.set(f"{NS}:seen:{event['event_id']}", 1, nx=True, ex=86400):
        decide_and_send.delay(event)


@app.task(name="bench.decide_and_send", bind=True, max_retries=5)
def decide_and_send(self: object, event: dict[str, str]) -> str:
    raw = _redis.hgetall(f"{NS}:profile:{event['subject_id']}")
    if not raw:
        return "denied: no profile"
    profile = json.loads(raw[b"traits"])
    if b"email/marketing" not in raw.get(b"consents", b"").split(b","):
        return "denied: consent"
    for rule_id, rule, effect in _RULES:
        if rule.matches(profile) == (effect == "deny"):
            return f"denied: {rule_id}"
    day = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    if not _CAP(keys=[f"{NS}:cap:{event['subject_id']}:{day}"], args=[workload.CAP_LIMIT, 2 * 86400]):
        return "denied: cap"
    key = f"{event['event_id']}:{workload.STEP_ID}"
    claim = f"{NS}:sent:{key}"
    if not _redis.set(claim, "sending", nx=True, ex=7 * 86400):
        return "duplicate"
    message = EmailMessage()
    message["From"] = workload.SENDER
    message["To"] = profile["email"]
    message["Subject"] = workload.SUBJECT_TEMPLATE.format(first_name=profile.get("first_name", "friend"), event_id=event["event_id"])
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain="example.com")
    message["X-Overture-Key"] = key
    message.set_content(workload.TEXT_TEMPLATE.format(first_name=profile.get("first_name", "there"), plan=event.get("plan", "")))
    try:
        _send(message)
    except (smtplib.SMTPException, OSError) as error:
        _redis.delete(claim)
        raise self.retry(exc=error, countdown=1) from None  # type: ignore[attr-defined]
    return "sent"


def seed(profiles: int) -> None:
    pipe = _redis.pipeline(transaction=False)
    for i in range(profiles):
        pipe.hset(f"{NS}:profile:{workload.subject_id(i)}", mapping={"traits": json.dumps(workload.traits(i)), "consents": "email/marketing"})
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()


def produce(events: int, tag: str, profiles: int) -> None:
    first = time.monotonic()
    for i in range(events):
        dedupe.delay({"event_id": f"{tag}{i:07d}", "event_type": workload.EVENT_TYPE, "subject_id": workload.subject_id(i % profiles),
                      "plan": "pro"})
    last = time.monotonic()
    print(json.dumps({"first": first, "last": last, "cpu": time.process_time(), "events": events}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the Celery-style peer pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("seed")
    s.add_argument("--profiles", type=int, required=True)
    p = sub.add_parser("produce")
    p.add_argument("--events", type=int, required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--profiles", type=int, required=True)
    args = parser.parse_args()
    if args.command == "seed":
        seed(args.profiles)
    else:
        produce(args.events, args.tag, args.profiles)
