"""The Slack connector: internal notifications and tasks, posted to a Slack
incoming webhook (https://api.slack.com/messaging/webhooks) as Block Kit.

A message becomes ``{"text", "blocks"}``: ``text`` is the notification's
fallback (the subject, else the start of the text); the blocks are a
header (the subject), sections for the text (Slack's mrkdwn, split at its
3,000-character limit), one section of fields for the message's data (up
to ten, by name), and a context line naming the journey and step. A message
whose metadata says ``task`` (``true``) renders as a task: a section naming
it a task and its ``assignee`` (a Slack member id ``U…``/``W…`` becomes a
mention, anything else is shown as text), its ``due`` date, and a button to
``task_url`` when given. Every piece of message content is escaped (``&``,
``<``, ``>``), so content cannot mention ``@channel`` or forge links, and
every block is cut to Slack's limits so that Slack never refuses a message
for its size.

The webhook URL holds a secret: it is the provider's ``url`` (a secret
setting) or the message's own (``Message.webhook.url``, or the address
when it is an http(s) URL: a notify step's ``to``), which is called only on
the provider's ``allowed_hosts`` (``hooks.slack.com`` unless configured;
:mod:`.egress`).

Slack answers ``ok``, or an error word with a 4xx (``invalid_payload``,
``channel_not_found``, ``channel_is_archived``, ``action_prohibited``):
refused for good. A 429 is retried after its ``Retry-After``; a 500 or 503
is retried (Slack did not post it); incoming webhooks have no
deduplication and no lookup, so a 502, a 504 and no answer after the
request was sent are in doubt and never posted again automatically.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pydantic

from overture.common.v1 import messaging_pb2
from overture_runtime.clock import Clock
from overture_runtime.config import ProviderConfig

from .egress import EgressPolicy
from .http_calls import call, classify, kept_response
from .plugin import ConnectorContext, OutboundMessage, SendResult
from .webhook import HttpEndpoint, webhook_id

__all__ = ["SlackConnector", "SlackPlugin", "SlackSettings", "blocks_of", "escape"]

_SECTION_TEXT = 3000
_HEADER_TEXT = 150
_FIELD_TEXT = 2000
_FIELDS = 10
_BLOCKS = 50
_FALLBACK_TEXT = 3000
_BUTTON_TEXT = 75
_URL = 3000
_IN_DOUBT = (502, 504)
_TRUE = {"true", "1", "yes"}


class SlackSettings(EgressPolicy, frozen=True, extra="forbid", hide_input_in_errors=True):
    """A Slack provider's settings. Errors never show the input: the URL is a secret."""

    url: pydantic.SecretStr | None = None
    """The incoming webhook's URL (``https://hooks.slack.com/services/…``, a secret); None: messages carry theirs."""
    allowed_hosts: tuple[str, ...] = ("hooks.slack.com",)
    connect_timeout_seconds: float = pydantic.Field(default=3.0, gt=0, le=60)
    timeout_seconds: float = pydantic.Field(default=10.0, gt=0, le=120)
    """The whole request's time limit (write and read), beyond the connection."""

    @pydantic.field_validator("url")
    @classmethod
    def _http(cls, url: pydantic.SecretStr | None) -> pydantic.SecretStr | None:
        if url is not None:
            try:
                pydantic.TypeAdapter(pydantic.AnyHttpUrl).validate_python(url.get_secret_value())
            except pydantic.ValidationError:
                raise ValueError("url must be an http or https URL") from None
        return url


def escape(text: str) -> str:
    """*text* as Slack mrkdwn shows it literally: ``&``, ``<`` and ``>`` escaped, so no mention or link can be forged."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _plain(text: str, limit: int) -> dict[str, Any]:
    return {"type": "plain_text", "text": _cut(text, limit), "emoji": True}


def _mrkdwn(text: str, limit: int) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": _cut(text, limit)}


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return orjson.dumps(value).decode()


def _assignee(who: str) -> str:
    who = who.strip()
    if who[:1] in ("U", "W") and who[1:].isalnum() and who.isupper() and len(who) <= 20:
        return f"<@{who}>"  # a member id: a mention notifies the assignee
    return escape(who)


def blocks_of(message: OutboundMessage) -> list[dict[str, Any]]:
    """The Block Kit blocks of *message*, each within Slack's limits (see the module docstring)."""
    blocks: list[dict[str, Any]] = []
    meta = message.metadata
    if message.subject:
        blocks.append({"type": "header", "text": _plain(message.subject, _HEADER_TEXT)})
    if meta.get("task", "").strip().lower() in _TRUE:
        lines = [":ballot_box_with_check: *Task*"]
        if meta.get("assignee"):
            lines.append(f"*Assignee:* {_assignee(meta['assignee'])}")
        if meta.get("due"):
            lines.append(f"*Due:* {escape(meta['due'])}")
        task: dict[str, Any] = {"type": "section", "text": _mrkdwn("\n".join(lines), _SECTION_TEXT)}
        link = meta.get("task_url", "")
        if link.startswith(("https://", "http://")) and len(link) <= _URL:
            task["accessory"] = {"type": "button", "text": _plain("Open task", _BUTTON_TEXT), "url": link, "action_id": "open_task"}
        blocks.append(task)
    text = escape(message.text_body.strip())
    while text and len(blocks) < _BLOCKS - 2:
        blocks.append({"type": "section", "text": _mrkdwn(text[:_SECTION_TEXT], _SECTION_TEXT)})
        text = text[_SECTION_TEXT:]
    fields = [_mrkdwn(f"*{escape(str(key))}*\n{escape(_value(value))}", _FIELD_TEXT)
              for key, value in sorted(message.data.items()) if value is not None and value != "" and value != [] and value != {}][:_FIELDS]
    if fields and len(blocks) < _BLOCKS - 1:
        blocks.append({"type": "section", "fields": fields})
    origin = " · ".join(escape(meta[k]) for k in ("journey", "step_id") if meta.get(k))
    if origin and len(blocks) < _BLOCKS:
        blocks.append({"type": "context", "elements": [_mrkdwn(f"Overture · {origin}", _SECTION_TEXT)]})
    return blocks


def payload_of(message: OutboundMessage) -> dict[str, Any]:
    """The incoming-webhook body of *message*: the fallback ``text`` and the ``blocks``."""
    fallback = message.subject or message.text_body.strip().split("\n", 1)[0] or "Overture notification"
    return {"text": _cut(escape(fallback), _FALLBACK_TEXT), "blocks": blocks_of(message)}


def _url_in(address: str) -> str:
    """The address when it is an incoming-webhook URL (a notify step's ``to``), else empty."""
    return address if address.startswith(("https://", "http://")) else ""


class SlackConnector:
    """Posts Block Kit messages to a Slack incoming webhook. Safe for concurrent sends."""

    channel: messaging_pb2.Channel.ValueType = messaging_pb2.CHANNEL_WEBHOOK

    def __init__(self, *, name: str, settings: SlackSettings, clock: Clock, rate_limit_per_second: float = 0.0,
                 max_connections: int = 16, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = name
        self.rate_limit_per_second = rate_limit_per_second
        self._clock = clock
        self._endpoint = HttpEndpoint(
            url=settings.url.get_secret_value() if settings.url else None, policy=settings, max_connections=max_connections,
            transport=transport, headers={"content-type": "application/json", "user-agent": "Overture-Slack/1"},
            timeout=httpx.Timeout(settings.timeout_seconds, connect=settings.connect_timeout_seconds, pool=settings.connect_timeout_seconds),
        )

    async def send(self, message: OutboundMessage) -> SendResult:
        """Post *message*; see the module docstring for how failures are classified."""
        client, url = self._endpoint.target(message.url or _url_in(message.address))
        msg_id = webhook_id(message.tenant, message.idempotency_key)
        answer = await call(client, "POST", url, who="Slack", content=orjson.dumps(payload_of(message)), provider_message_id=msg_id)
        response = kept_response(answer) if message.keep_response else None
        # Slack's error words (channel_not_found) say why; anything else the body holds is not repeated.
        error = answer.body[:64].decode("ascii", "replace") if answer.body and answer.status >= 400 else ""
        error = error if error.replace("_", "").isalpha() and error.islower() else ""
        classify(answer, self._clock.now(), who=f"Slack ({error})" if error else "Slack", provider_message_id=msg_id,
                 in_doubt=_IN_DOUBT, response=response)
        return SendResult(provider_message_id=msg_id, detail=str(answer.status), response=response)

    async def status(self, provider_message_id: str) -> str | None:
        """Incoming webhooks have no status lookup."""
        return None

    async def close(self) -> None:
        """Close the connection pools."""
        await self._endpoint.close()


class SlackPlugin:
    """The ``slack`` kind (entry point ``overture.connectors:slack``), on the webhook channel."""

    channel = messaging_pb2.CHANNEL_WEBHOOK
    settings_model = SlackSettings

    def create(self, provider: ProviderConfig, settings: SlackSettings, context: ConnectorContext) -> SlackConnector:
        """A Slack connector for *provider*."""
        return SlackConnector(name=provider.name, settings=settings, clock=context.clock,
                              rate_limit_per_second=provider.rate_limit_per_second,
                              max_connections=context.settings.connector_concurrency)
