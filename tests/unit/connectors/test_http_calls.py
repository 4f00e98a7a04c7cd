"""Unit tests of how an HTTP answer is classified and kept."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest

from overture_connectors.http_calls import MAX_DEPTH, Answer, classify, kept_response
from overture_connectors.plugin import InDoubt, PermanentFailure, TransientFailure

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def answer(status: int, body: bytes | None = b"", **headers: str) -> Answer:
    """An answer with *status*, *body* and *headers*."""
    return Answer(status, httpx.Headers(headers), body, "" if body is not None else "too_large")


@pytest.mark.parametrize(("status", "failure"), [
    (200, None), (204, None), (408, TransientFailure), (429, TransientFailure), (500, TransientFailure), (503, TransientFailure),
    (504, InDoubt), (301, PermanentFailure), (400, PermanentFailure), (404, PermanentFailure), (410, PermanentFailure),
])
def test_answers_are_classified_by_whether_the_receiver_can_have_acted(status: int, failure: type[Exception] | None) -> None:
    """2xx succeed; 408, 429 and 5xx but 504 are retryable; 504 is in doubt; 3xx and other 4xx are refused for good."""
    if failure is None:
        classify(answer(status), NOW, who="x")
    else:
        with pytest.raises(failure):
            classify(answer(status), NOW, who="x")


def test_a_kind_may_name_more_in_doubt_codes_and_retry_after_is_honoured() -> None:
    """A kind whose receivers do not deduplicate treats 502 as in doubt; a 429's Retry-After becomes the retry delay."""
    with pytest.raises(InDoubt):
        classify(answer(502), NOW, who="x", in_doubt=(502, 504))
    with pytest.raises(TransientFailure) as later:
        classify(answer(429, **{"retry-after": "12"}), NOW, who="x")
    assert later.value.retry_after == dt.timedelta(seconds=12)


def test_a_refusal_carries_the_kept_response() -> None:
    """The response kept for a 4xx travels on the PermanentFailure."""
    with pytest.raises(PermanentFailure) as refused:
        classify(answer(422), NOW, who="x", response={"status": 422})
    assert refused.value.response == {"status": 422}


def test_kept_responses_hold_json_parsed_text_as_text_and_say_why_a_body_is_left_out() -> None:
    """JSON is kept parsed (also without a JSON content type when it starts like one), text as text with NUL replaced, an empty
    body as the status alone; an oversized or too deep body is left out with the reason."""
    assert kept_response(answer(200, b'{"a": [1, "x\\u0000"]}', **{"content-type": "application/json"})) == {
        "status": 200, "body": {"a": [1, "x\ufffd"]}}
    assert kept_response(answer(200, b'[1, 2]', **{"content-type": "text/plain"})) == {"status": 200, "body": [1, 2]}
    assert kept_response(answer(200, b"ok")) == {"status": 200, "body": "ok"}
    assert kept_response(answer(204)) == {"status": 204}
    assert kept_response(answer(200, None)) == {"status": 200, "body_omitted": "too_large"}
    deep = b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)
    assert kept_response(answer(200, deep, **{"content-type": "application/json"})) == {"status": 200, "body_omitted": "too_deep"}
    assert kept_response(answer(200, b"{not json", **{"content-type": "application/json"})) == {"status": 200, "body": "{not json"}
