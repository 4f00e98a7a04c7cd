"""The checks of a message to send (Send, SendBatch): each problem at its field path."""

from __future__ import annotations

from overture.common.v1 import messaging_pb2
from overture.connectors.v1 import delivery_pb2
from overture_runtime import Violations
from overture_runtime.validation import check_identifier, check_struct

from .egress import MAX_URL, parse_url
from .web_push import check_push_options

__all__ = ["MAX_MEMBERS", "validate_message"]

_CONTENT_MAX = 256 * 1024
_ADDRESS_MAX = 512
MAX_MEMBERS = 10_000
"""The most audience members one message may carry."""
_EMAIL_MAX = 320
_PHONE_MAX = 64
_MEMBER_PROBLEMS_MAX = 10


def validate_message(v: Violations, message: delivery_pb2.Message, *, prefix: str = "message.") -> None:
    """Record the problems of a message to send, with field paths under *prefix*."""
    check_identifier(v, f"{prefix}idempotency_key", message.idempotency_key)
    if message.channel == messaging_pb2.CHANNEL_UNSPECIFIED:
        v.add(f"{prefix}channel", "channel is required", "REQUIRED")
    elif message.channel not in messaging_pb2.Channel.values():
        v.add(f"{prefix}channel", f"unknown channel {message.channel}", "INVALID_ENUM")
    check_identifier(v, f"{prefix}subject_id", message.subject_id)
    if not message.address.strip():
        v.add(f"{prefix}address", "address is required", "REQUIRED")
    elif len(message.address) > _ADDRESS_MAX:
        v.add(f"{prefix}address", f"address must be at most {_ADDRESS_MAX} characters", "TOO_LONG")
    elif message.channel == messaging_pb2.CHANNEL_EMAIL and ("@" not in message.address or any(c in message.address for c in "\r\n<>,;")):
        v.add(f"{prefix}address", "address is not a valid email address", "INVALID_ADDRESS")
    content = message.content
    size = len(content.subject) + len(content.text_body) + len(content.html_body)
    if size > _CONTENT_MAX:
        v.add(f"{prefix}content", f"content is {size} characters; the limit is {_CONTENT_MAX}", "TOO_LARGE")
    if "\n" in content.subject or "\r" in content.subject:
        v.add(f"{prefix}content.subject", "subject must be one line", "INVALID")
    check_struct(v, f"{prefix}content.data", content.data, max_bytes=_CONTENT_MAX)
    if message.channel == messaging_pb2.CHANNEL_EMAIL and not (content.text_body or content.html_body):
        v.add(f"{prefix}content", "an email needs a text or HTML body", "REQUIRED")
    if message.channel == messaging_pb2.CHANNEL_SMS and not content.text_body.strip():
        v.add(f"{prefix}content.text_body", "an SMS needs a text body", "REQUIRED")
    check_push_options(v, message.push, prefix=f"{prefix}push.")
    if message.HasField("webhook"):
        _validate_webhook(v, message, prefix=f"{prefix}webhook.")
    if message.channel == messaging_pb2.CHANNEL_AUDIENCE_SYNC:
        _validate_audience(v, message, prefix=f"{prefix}audience.")


def _validate_webhook(v: Violations, message: delivery_pb2.Message, *, prefix: str) -> None:
    options = message.webhook
    if options.url:
        parsed, problem = parse_url(options.url)
        if parsed is None:
            v.add(f"{prefix}url", f"url is refused: {problem}", "TOO_LONG" if len(options.url) > MAX_URL else "INVALID_URL")




def _validate_audience(v: Violations, message: delivery_pb2.Message, *, prefix: str) -> None:
    options = message.audience
    check_identifier(v, f"{prefix}audience_id", options.audience_id)
    if options.operation == delivery_pb2.AUDIENCE_OPERATION_UNSPECIFIED:
        v.add(f"{prefix}operation", "operation is required: ADD or REMOVE", "REQUIRED")
    elif options.operation not in delivery_pb2.AudienceOperation.values():
        v.add(f"{prefix}operation", f"unknown operation {options.operation}", "INVALID_ENUM")
    if len(options.members) > MAX_MEMBERS:
        v.add(f"{prefix}members", f"at most {MAX_MEMBERS} members per message; split the audience", "TOO_MANY")
        return
    problems = 0
    for index, member in enumerate(options.members):
        where = f"{prefix}members[{index}]"
        if not member.email and not member.phone_number:
            v.add(where, "a member needs an email or a phone number", "REQUIRED")
        elif len(member.email) > _EMAIL_MAX:
            v.add(f"{where}.email", f"email must be at most {_EMAIL_MAX} characters", "TOO_LONG")
        elif len(member.phone_number) > _PHONE_MAX:
            v.add(f"{where}.phone_number", f"phone_number must be at most {_PHONE_MAX} characters", "TOO_LONG")
        else:
            continue
        problems += 1
        if problems == _MEMBER_PROBLEMS_MAX:  # an answer stays small whatever the members
            v.add(f"{prefix}members", f"more members may be wrong; only the first {_MEMBER_PROBLEMS_MAX} problems are named",
                  "TOO_MANY_PROBLEMS")
            return
