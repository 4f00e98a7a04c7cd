"""The Slack connector against ``fake_slack_webhooks``, a real HTTP server that checks Slack's incoming-webhook format and
Block Kit limits: notifications and tasks arrive as valid blocks with escaped content, oversized content stays within the limits,
and Slack's answers (ok, 429, 404, a dropped answer) lead to the right delivery outcome, never a repeat."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from google.protobuf import struct_pb2

from overture.common.v1 import messaging_pb2
from overture.connectors.v1 import connector_service_pb2 as C
from overture.connectors.v1 import delivery_pb2
from overture_runtime.config import Settings
from tests.conftest import admin_metadata

from .connectors_support import CountingSink, connectors_service
from .fake_slack import block_problems, fake_slack_webhooks

S = messaging_pb2
AUTH = admin_metadata()


def note(key: str, *, subject: str = "New enterprise lead", text: str = "Acme Corp signed up for a *trial*.",
         data: dict[str, Any] | None = None, metadata: dict[str, str] | None = None, url: str = "") -> delivery_pb2.Message:
    """A Slack notification with idempotency key *key*."""
    content = delivery_pb2.MessageContent(subject=subject, text_body=text, data=struct_pb2.Struct())
    content.data.update(data if data is not None else {"plan": "enterprise", "seats": 250, "trial": True})
    return delivery_pb2.Message(
        idempotency_key=key, channel=S.CHANNEL_WEBHOOK, subject_id=f"s-{key}", address="#sales", connector="slack",
        content=content, metadata={"journey": "lead-routing", "step_id": "notify-sales", **(metadata or {})},
        category=S.MESSAGE_CATEGORY_TRANSACTIONAL, webhook=delivery_pb2.WebhookOptions(url=url) if url else None)


def slack(url: str = "", **settings: Any) -> str:
    """One Slack provider posting to *url*."""
    return json.dumps([{"name": "slack", "kind": "slack", "breaker": {"failure_threshold": 1000},
                        "settings": {**({"url": url} if url else {}), **settings}}])


def texts(blocks: list[dict[str, Any]], kind: str = "mrkdwn") -> str:
    """Every text of *blocks* of type *kind* (mrkdwn, which Slack parses for mentions and links; plain_text it shows as is), joined."""
    found: list[str] = []
    for block in blocks:
        for item in [block.get("text"), *block.get("fields", []), *block.get("elements", []), (block.get("accessory") or {}).get("text")]:
            if isinstance(item, dict) and item["type"] == kind:
                found.append(item["text"])
    return "\n".join(found)


async def test_a_notification_and_a_task_arrive_as_valid_block_kit(make_settings: Callable[..., Settings]) -> None:
    """A notification posts a header, its mrkdwn text, its data as fields and the journey as context; a task adds a task section
    mentioning its assignee with a button to the task; Slack's format checker takes both."""
    async with fake_slack_webhooks() as fake:
        with CountingSink() as sink:
            async with connectors_service(make_settings, sink, connector_providers=slack(fake.url)) as service:
                sent = await service.stub.SendBatch(C.SendBatchRequest(messages=[
                    note("r-1:notify"),
                    note("r-2:task", subject="Call Acme back", metadata={"task": "true", "assignee": "U024BE7LH", "due": "2026-12-10",
                                                                          "task_url": "https://crm.example.com/tasks/9"}),
                ]), metadata=AUTH)
    assert [r.delivery.status for r in sent.results] == [S.DELIVERY_STATUS_SENT] * 2 and not fake.refused
    notification, task = fake.posted
    assert notification["text"] == "New enterprise lead"
    assert [b["type"] for b in notification["blocks"]] == ["header", "section", "section", "context"]
    assert notification["blocks"][1]["text"] == {"type": "mrkdwn", "text": "Acme Corp signed up for a *trial*."}
    assert [f["text"] for f in notification["blocks"][2]["fields"]] == ["*plan*\nenterprise", "*seats*\n250", "*trial*\ntrue"]
    assert "lead-routing · notify-sales" in notification["blocks"][3]["elements"][0]["text"]
    task_block = task["blocks"][1]
    assert "*Task*" in task_block["text"]["text"] and "<@U024BE7LH>" in task_block["text"]["text"] and "2026-12-10" in task_block["text"]["text"]
    assert task_block["accessory"]["url"] == "https://crm.example.com/tasks/9"


async def test_content_cannot_mention_or_link_and_oversized_content_stays_within_slacks_limits(
        make_settings: Callable[..., Settings]) -> None:
    """Content with <!channel>, a forged link and & is escaped in every mrkdwn text and the fallback (an assignee that is not a member
    id too), and shown as is in the plain-text header, which Slack does not parse; a 200-character
    subject, 20,000 characters of text and 30 data fields are cut to Slack's limits, and Slack takes the message."""
    hostile = "<!channel> see <https://evil.example|your bank> & more"
    async with fake_slack_webhooks() as fake:
        with CountingSink() as sink:
            async with connectors_service(make_settings, sink, connector_providers=slack(fake.url)) as service:
                await service.stub.SendBatch(C.SendBatchRequest(messages=[
                    note("r-1:x", subject=hostile, text=hostile, data={"<!here>": hostile}, metadata={"task": "1", "assignee": "<!everyone>"}),
                    note("r-2:x", subject="S" * 200, text="word " * 4000, data={f"field{i}": "v" * 3000 for i in range(30)}),
                ]), metadata=AUTH)
    assert not fake.refused
    escaped, big = fake.posted
    for text in (texts(escaped["blocks"]), escaped["text"]):
        assert "<!" not in text and "<https" not in text
    assert "&lt;!channel&gt;" in texts(escaped["blocks"]) and "&amp;" in texts(escaped["blocks"])
    assert "&lt;!everyone&gt;" in texts(escaped["blocks"])
    assert texts(escaped["blocks"], "plain_text") == hostile
    assert not block_problems(big["blocks"])
    assert len(big["blocks"][0]["text"]["text"]) == 150 and len(big["blocks"][-2]["fields"]) == 10
    assert sum(len(b["text"]["text"]) for b in big["blocks"] if b["type"] == "section" and "text" in b) >= 19_990


async def test_slacks_answers_lead_to_the_right_outcome_and_nothing_is_posted_twice(make_settings: Callable[..., Settings]) -> None:
    """A 429 is retried after its Retry-After, a 404 channel_not_found fails for good naming the error, a 502 is IN_DOUBT; sending every
    key again posts only the rate-limited one."""
    async with fake_slack_webhooks() as fake:
        fake.script += [(429, {"retry-after": "30"}, "rate_limited"), (404, {}, "channel_not_found"), (502, {}, "")]
        with CountingSink() as sink:
            async with connectors_service(make_settings, sink, connector_providers=slack(fake.url),
                                          connector_concurrency=1) as service:
                keys = ["k-429:n", "k-404:n", "k-502:n"]
                first = [(await service.stub.SendBatch(C.SendBatchRequest(messages=[note(k)]), metadata=AUTH)).results[0] for k in keys]
                again = await service.stub.SendBatch(C.SendBatchRequest(messages=[note(k) for k in keys]), metadata=AUTH)
    limited, missing, gateway = first
    assert (limited.delivery.status, limited.error.reason) == (S.DELIVERY_STATUS_FAILED, "PROVIDER_UNAVAILABLE")
    assert limited.error.retry_delay.ToTimedelta() == dt.timedelta(seconds=30)
    assert missing.delivery.status == S.DELIVERY_STATUS_FAILED and not missing.HasField("error")
    assert "channel_not_found" in missing.delivery.last_error
    assert gateway.delivery.status == S.DELIVERY_STATUS_IN_DOUBT
    assert [r.delivery.status for r in again.results] == [S.DELIVERY_STATUS_SENT, S.DELIVERY_STATUS_FAILED, S.DELIVERY_STATUS_IN_DOUBT]
    assert len(fake.posted) == 1


async def test_a_notify_steps_own_webhook_url_is_used_only_on_allowed_hosts(make_settings: Callable[..., Settings]) -> None:
    """Without a provider URL, a message's own incoming-webhook URL (webhook.url, or an address that is a URL, as a notify step's `to`)
    is posted to when its host is allowed; with the default allowed_hosts (hooks.slack.com) the same loopback URL is refused for good
    and nothing is posted."""
    async with fake_slack_webhooks() as fake:
        local = slack(allowed_hosts=["127.0.0.1"], allowed_private_networks=["127.0.0.1/32"])
        with CountingSink() as sink:
            async with connectors_service(make_settings, sink, connector_providers=local) as service:
                allowed = (await service.stub.Send(C.SendRequest(message=note("k:ok", url=fake.url)), metadata=AUTH)).delivery
                to = note("k:to")
                to.address = fake.url
                by_address = (await service.stub.Send(C.SendRequest(message=to), metadata=AUTH)).delivery
            async with connectors_service(make_settings, sink, connector_providers=slack()) as service:
                refused = (await service.stub.Send(C.SendRequest(message=note("k:refused", url=fake.url)), metadata=AUTH)).delivery
    assert allowed.status == by_address.status == S.DELIVERY_STATUS_SENT and refused.status == S.DELIVERY_STATUS_FAILED
    assert "allowed_hosts" in refused.last_error and "xoxb" not in refused.last_error
    assert len(fake.posted) == 2
