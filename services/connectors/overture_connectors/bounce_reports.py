"""Reading bounce and complaint reports: delivery status notifications
(RFC 3464, ``multipart/report; report-type=delivery-status``) and feedback
reports (ARF, RFC 5965, ``report-type=feedback-report``), with the
standard library's email parser.

A report names the message it is about by its ``Message-ID``, in the
returned original (``message/rfc822``) or its headers
(``text/rfc822-headers``); Overture's Message-IDs are derived from the
idempotency key (:meth:`~.email.SmtpConnector.message_id`), which is how a
report finds its delivery.

A bounce is *hard* when the failure is permanent and about the address
(RFC 3463 class 5, except a full mailbox, a message too large, and policy
refusals (5.7.x), which say nothing against the address); everything else
that failed or was delayed is *soft*. A report that is neither is not a
bounce: ``delivered``, ``relayed`` and ``expanded`` actions are ignored.
Nothing personal is kept: only status codes and the feedback type.
"""

from __future__ import annotations

import email
import email.errors
import email.policy
import enum
import re
from dataclasses import dataclass
from email.message import Message

__all__ = ["FeedbackKind", "Report", "parse_report"]

_STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})$")
_MESSAGE_ID = re.compile(r"<[^<>\s]{1,250}>")
_SOFT_PERMANENT = {"5.2.2", "5.2.3", "5.3.4"}
"""Class 5 codes that are not about the address: mailbox full, message too large."""
MAX_REPORT = 10 * 1024 * 1024
"""The largest report read, in bytes (reports may quote the whole original)."""


class FeedbackKind(enum.Enum):
    """What a report says about a delivery."""

    HARD_BOUNCE = "hard_bounce"
    """Permanently undeliverable to this address: the address is suppressed."""
    SOFT_BOUNCE = "soft_bounce"
    """Not delivered for now, or for reasons not about the address."""
    COMPLAINT = "complaint"
    """The recipient marked the message as spam: the address is suppressed."""


@dataclass(frozen=True)
class Report:
    """One bounce or complaint, about one message."""

    kind: FeedbackKind
    """What it says."""
    message_id: str
    """The original message's Message-ID, with its angle brackets."""
    detail: str
    """The status code and action, or the feedback type: no personal data."""


def parse_report(raw: bytes) -> Report | None:
    """The bounce or complaint *raw* reports, or None when it is not one
    (or names no message). Never raises on malformed input."""
    if len(raw) > MAX_REPORT:
        return None
    try:
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
        return _report(message)
    except (email.errors.MessageError, ValueError, LookupError, TypeError, AttributeError, IndexError):
        return None


def _report(message: Message) -> Report | None:
    report = next((p for p in message.walk() if p.get_content_type() == "multipart/report"), None)
    if report is None:
        return None
    kind_of_report = str(report.get_param("report-type", "", header="content-type") or "").lower()
    message_id = _original_message_id(report)
    if not message_id:
        return None
    if kind_of_report == "delivery-status":
        return _bounce(report, message_id)
    if kind_of_report == "feedback-report":
        return _complaint(report, message_id)
    return None


def _bounce(report: Message, message_id: str) -> Report | None:
    status_part = next((p for p in report.walk() if p.get_content_type() == "message/delivery-status"), None)
    if status_part is None:
        return None
    blocks = status_part.get_payload()
    if not isinstance(blocks, list):
        return None
    for block in blocks[1:]:  # the first block is about the message, the others each about a recipient
        if not isinstance(block, Message):
            continue
        action = str(block.get("Action", "")).strip().lower()
        status = str(block.get("Status", "")).strip().split(" ")[0]
        match = _STATUS.match(status)
        if action not in ("failed", "delayed") or match is None:
            continue
        hard = action == "failed" and match.group(1) == "5" and status not in _SOFT_PERMANENT and match.group(2) != "7"
        return Report(FeedbackKind.HARD_BOUNCE if hard else FeedbackKind.SOFT_BOUNCE, message_id, f"{action} {status}")
    return None


def _complaint(report: Message, message_id: str) -> Report | None:
    part = next((p for p in report.walk() if p.get_content_type() == "message/feedback-report"), None)
    if part is None:
        return None
    fields = part.get_payload()
    if isinstance(fields, list) and fields and isinstance(fields[0], Message):
        feedback_type = str(fields[0].get("Feedback-Type", ""))
    else:  # some senders put the fields in a plain body
        found = re.search(r"^Feedback-Type:\s*(\S+)", str(fields), re.MULTILINE | re.IGNORECASE)
        feedback_type = found.group(1) if found else ""
    feedback_type = feedback_type.strip().lower()[:32]
    if not feedback_type or not feedback_type.replace("-", "").isalnum():
        return None
    if feedback_type == "not-spam":
        return None
    return Report(FeedbackKind.COMPLAINT, message_id, f"feedback {feedback_type}")


def _original_message_id(report: Message) -> str:
    """The Message-ID of the returned message, from message/rfc822 or text/rfc822-headers."""
    for part in report.walk():
        content_type = part.get_content_type()
        if content_type == "message/rfc822":
            inner = part.get_payload()
            value = str(inner[0].get("Message-ID", "")) if isinstance(inner, list) and inner and isinstance(inner[0], Message) else ""
        elif content_type == "text/rfc822-headers":
            text = part.get_payload(decode=True)
            headers = email.message_from_bytes(text if isinstance(text, bytes) else b"", policy=email.policy.compat32)
            value = str(headers.get("Message-ID", ""))
        else:
            continue
        found = _MESSAGE_ID.search(value)
        if found:
            return found.group(0)
    return ""
