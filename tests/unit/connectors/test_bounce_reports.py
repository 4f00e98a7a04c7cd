"""Unit tests of reading bounces (RFC 3464) and complaints (ARF, RFC 5965) (:mod:`overture_connectors.bounce_reports`)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overture_connectors.bounce_reports import FeedbackKind, Report, parse_report

MESSAGE_ID = "<b406e4c4126c1b15421f1a917eaeb4fe@overture.test>"


def dsn(*, action: str = "failed", status: str = "5.1.1", returned: str = "headers", message_id: str = MESSAGE_ID) -> bytes:
    """A delivery status notification as a receiving MTA writes it."""
    original = (f"Content-Type: text/rfc822-headers\r\n\r\nMessage-ID: {message_id}\r\nFrom: no-reply@overture.test\r\n"
                if returned == "headers" else
                f"Content-Type: message/rfc822\r\n\r\nMessage-ID: {message_id}\r\nSubject: Hi\r\n\r\nHello\r\n")
    return (
        "From: MAILER-DAEMON@mx.example.net\r\nTo: bounces@overture.test\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered to alice@example.com.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n"
        f"Final-Recipient: rfc822; alice@example.com\r\nAction: {action}\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; 550 {status} alice@example.com: user unknown\r\n\r\n"
        f"--B\r\n{original}\r\n--B--\r\n"
    ).encode()


def arf(feedback_type: str = "abuse") -> bytes:
    """A feedback report as a mailbox provider's feedback loop sends it."""
    return (
        'From: fbl@isp.example\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary="C"\r\n\r\n'
        "--C\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n"
        f"--C\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: {feedback_type}\r\nUser-Agent: ISP-FBL/1.0\r\nVersion: 1\r\n"
        "Original-Rcpt-To: alice@example.com\r\n\r\n"
        f"--C\r\nContent-Type: message/rfc822\r\n\r\nMessage-ID: {MESSAGE_ID}\r\nSubject: Hi\r\n\r\nHello\r\n--C--\r\n"
    ).encode()


@pytest.mark.parametrize("returned", ["headers", "message"])
def test_a_permanent_address_failure_is_a_hard_bounce(returned: str) -> None:
    """Action failed with 5.1.1 is a hard bounce of the returned message, whether its headers or the whole message came back."""
    assert parse_report(dsn(returned=returned)) == Report(FeedbackKind.HARD_BOUNCE, MESSAGE_ID, "failed 5.1.1")


@pytest.mark.parametrize(("action", "status"), [("delayed", "4.4.1"), ("failed", "4.2.2"), ("failed", "5.2.2"), ("failed", "5.7.1"),
                                                 ("failed", "5.3.4")])
def test_temporary_and_non_address_failures_are_soft(action: str, status: str) -> None:
    """Delays, class 4, a full mailbox, a message too large and policy refusals are soft bounces."""
    report = parse_report(dsn(action=action, status=status))
    assert report is not None and report.kind is FeedbackKind.SOFT_BOUNCE


@pytest.mark.parametrize("action", ["delivered", "relayed", "expanded"])
def test_a_success_notification_is_not_a_bounce(action: str) -> None:
    """A DSN saying the message was delivered, relayed or expanded is not a bounce."""
    assert parse_report(dsn(action=action, status="2.0.0")) is None


def test_an_abuse_report_is_a_complaint_without_personal_data() -> None:
    """An ARF abuse report is a complaint about the returned message, and its detail holds only the feedback type."""
    assert parse_report(arf()) == Report(FeedbackKind.COMPLAINT, MESSAGE_ID, "feedback abuse")


def test_not_spam_is_no_complaint() -> None:
    """A feedback report of type not-spam complains about nothing."""
    assert parse_report(arf("not-spam")) is None


@pytest.mark.parametrize("raw", [
    b"", b"Subject: hello\r\n\r\nplain mail", dsn(message_id="none"), dsn(status="five"), b"Content-Type: multipart/report\r\n\r\n--",
    b"\xff\xfe\x00" * 100, b"Content-Type: multipart/report; report-type=delivery-status; boundary=\r\n\r\n--\r\n",
])
def test_what_is_not_a_readable_report_is_none(raw: bytes) -> None:
    """Plain mail, reports naming no message, bad status codes and garbage read as None."""
    assert parse_report(raw) is None


@given(st.binary(max_size=2000))
def test_parsing_never_raises(raw: bytes) -> None:
    """Any bytes at all parse to a report or None, never an exception."""
    parse_report(raw)
