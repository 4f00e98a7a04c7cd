"""Unit tests of the Slack connector's Block Kit rendering and settings."""

from __future__ import annotations

import pydantic
import pytest

from overture_connectors.plugin import OutboundMessage
from overture_connectors.slack import SlackSettings, blocks_of, escape, payload_of


def message(**fields: object) -> OutboundMessage:
    """A Slack message with *fields*."""
    return OutboundMessage(idempotency_key="r:s", tenant="acme", address="#ops", **fields)  # type: ignore[arg-type]


def test_escape_neutralises_mentions_links_and_entities() -> None:
    """&, < and > are escaped, so <!channel> and <url|text> show literally."""
    assert escape("<!channel> & <https://x|y>") == "&lt;!channel&gt; &amp; &lt;https://x|y&gt;"


@pytest.mark.parametrize(("assignee", "shown"), [
    ("U024BE7LH", "<@U024BE7LH>"), ("W012A3CDE", "<@W012A3CDE>"), ("ops-team", "ops-team"), ("u024be7lh", "u024be7lh"),
    ("<!here>", "&lt;!here&gt;"), ("U12 3", "U12 3"),
])
def test_only_member_ids_become_mentions(assignee: str, shown: str) -> None:
    """A Slack member id (U…/W…) is mentioned; any other assignee is shown as escaped text."""
    (task,) = blocks_of(message(metadata={"task": "yes", "assignee": assignee}))
    assert f"*Assignee:* {shown}" in task["text"]["text"]


def test_a_task_without_a_link_has_no_button_and_a_non_http_link_is_dropped() -> None:
    """A task's button appears only for an http(s) task_url."""
    (plain,) = blocks_of(message(metadata={"task": "true"}))
    (odd,) = blocks_of(message(metadata={"task": "true", "task_url": "javascript:alert(1)"}))
    assert "accessory" not in plain and "accessory" not in odd


def test_an_empty_message_still_has_a_fallback_text_and_no_empty_block() -> None:
    """A message with no subject, text or data posts a fallback text and no blocks; empty data values are left out."""
    assert payload_of(message()) == {"text": "Overture notification", "blocks": []}
    assert blocks_of(message(data={"a": "", "b": None, "c": [], "d": 0})) == [
        {"type": "section", "fields": [{"type": "mrkdwn", "text": "*d*\n0"}]}]


def test_the_fallback_is_the_first_line_of_the_text_when_there_is_no_subject() -> None:
    """Without a subject, the notification text is the text's first line, escaped."""
    assert payload_of(message(text_body="Deploy <failed>\nsee logs"))["text"] == "Deploy &lt;failed&gt;"


@pytest.mark.parametrize("settings", [{"url": "not a url"}, {"url": "ftp://hooks.slack.com/x"}, {"timeout_seconds": 0}])
def test_bad_slack_settings_are_refused(settings: dict[str, object]) -> None:
    """A webhook URL that is not http(s) or a zero timeout fails validation at start-up, and the URL is never echoed."""
    with pytest.raises(pydantic.ValidationError) as refused:
        SlackSettings.model_validate(settings)
    assert "hooks.slack.com/x" not in str(refused.value)
