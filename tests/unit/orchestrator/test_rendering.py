"""Unit tests of :mod:`overture_orchestrator.rendering`: strict,
all-or-nothing rendering whose errors name the part and the missing name,
never a value."""

from __future__ import annotations

from typing import Any

import jinja2.sandbox
import pytest

from overture.common.v1 import messaging_pb2 as M
from overture.orchestrator.v1 import journey_pb2 as J
from overture_orchestrator.rendering import RenderError, message_of, render, render_message, render_text, render_value, templates_env
from overture_runtime.templates import profile_scope, run_scope, template_scope

from .specs import compiled, journey, send, step

EMAIL, PHONE, NAME = "ada@example.com", "+4915112345678", "<b>Ada</b> & co"
"""Personal data in the scope, which no error may quote."""


def scope(**traits: Any) -> dict[str, Any]:
    """A template scope for a subject with an email, a phone number, a name and *traits*."""
    profile = profile_scope(subject_id="user-1", traits={"email": EMAIL, "phone": PHONE, "first_name": NAME, **traits}, segments=["vip"],
                            timezone="Europe/Berlin")
    event = {"event_id": "e-1", "event_type": "order.completed", "attributes": {"total": 42, "buyer": EMAIL}, "occurred_at": ""}
    return template_scope(profile=profile, event=event, run=run_scope(run_id="r-1", journey="promo", step_id="hello"),
                          steps={"wait": {"event": {"attributes": {"coupon": "SAVE10"}}}})


def failure(call: Any, *args: Any, **kwargs: Any) -> str:
    """The message of the RenderError *call* raises; it quotes no personal data of the scope."""
    with pytest.raises(RenderError) as raised:
        call(*args, **kwargs)
    message = str(raised.value)
    assert not any(secret in message for secret in (EMAIL, PHONE, NAME, "Ada")), message
    return message


# --- render_text -----------------------------------------------------------------------


def test_an_inline_template_renders_stripped() -> None:
    """An inline template (an address) renders in the scope, without surrounding whitespace; an empty one is empty."""
    assert render_text("  {{ profile.traits.email }}\n", scope(), where="the address of step 'hello'") == EMAIL
    assert render_text("", {}, where="the address of step 'hello'") == ""


@pytest.mark.parametrize(("source", "missing"), [
    ("{{ profile.traits.work_email }}", "work_email"),
    ("{{ profile.traits.address.city }}", "address"),
    ("{{ event.attributes.coupon }}", "coupon"),
    ("{{ steps.approval.response }}", "approval"),
    ("{{ profile.traits.email.domain }}", "domain"),
])
def test_a_missing_value_fails_naming_the_part_and_the_name(source: str, missing: str) -> None:
    """A value the scope lacks fails the render with a message naming where and the missing name, never a value."""
    message = failure(render_text, source, scope(), where="the address of step 'hello'")
    assert message.startswith("the address of step 'hello' failed to render: ") and repr(missing) in message


def test_a_key_computed_from_the_data_is_not_quoted() -> None:
    """A lookup by a value (`prices[profile.traits.email]`) that misses fails without quoting the value it looked up."""
    message = failure(render_text, "{{ profile.traits[profile.traits.email] }}", scope(), where="the address of step 'hello'")
    assert message == "the address of step 'hello' failed to render: 'dict object' has no attribute <a value of the data>"


@pytest.mark.parametrize(("source", "why"), [("{{ profile.traits.email + 1 }}", "TypeError"), ("{{ 1 / 0 }}", "ZeroDivisionError"),
                                             ("{{ profile.traits.phone | int(base=2) / 0 }}", "ZeroDivisionError")])
def test_other_errors_keep_only_their_type(source: str, why: str) -> None:
    """An error that is not Jinja's own is reported by its type alone, since its message may quote a value."""
    assert failure(render_text, source, scope(), where="the url of step 'call'") == f"the url of step 'call' failed to render: {why}"


def test_a_template_that_does_not_parse_is_a_render_error() -> None:
    """An inline template that does not parse fails as a RenderError naming where, not as a Jinja exception."""
    assert failure(render_text, "{{ profile.traits.email ", scope(), where="the address of step 'hello'").startswith("the address of step")


def test_a_template_says_what_to_do_without_a_value() -> None:
    """`default`, `is defined` and `if` render without the value, even through a chain of missing keys."""
    source = ("Hi {{ profile.traits.address.city | default('there') }}{% if profile.traits.vip %} VIP{% endif %}"
              "{{ ' (known)' if profile.traits.nickname is defined else '' }}!")
    assert render_text(source, scope(), where="x") == "Hi there!"


def test_templates_render_in_a_sandbox() -> None:
    """Templates cannot reach Python internals or mutate what they are given."""
    with pytest.raises(jinja2.sandbox.SecurityError):
        templates_env.from_string("{{ ''.__class__.__mro__ }}").render()
    items: list[int] = []
    with pytest.raises(jinja2.sandbox.SecurityError):
        templates_env.from_string("{{ items.append(1) }}").render(items=items)
    assert items == []
    assert "unsafe" in failure(render_text, "{{ profile.traits.email.__class__ }}", scope(), where="x")


# --- render_value -------------------------------------------------------------------------


def test_a_structure_renders_its_strings_only() -> None:
    """Every string inside dicts and lists renders; numbers, booleans, null and strings without braces come back as they are."""
    value = {"plan": "pro", "coupon": "{{ steps.wait.event.attributes.coupon }}", "score": 10, "ratio": 0.5, "vip": True, "none": None,
             "lines": ["{{ profile.subject_id }}", 3, {"deep": "{{ run.journey }}-{{ run.step_id }}"}], "braces": "50% {off}"}
    assert render_value(value, scope(), where="the traits of step 'update'") == {
        "plan": "pro", "coupon": "SAVE10", "score": 10, "ratio": 0.5, "vip": True, "none": None,
        "lines": ["user-1", 3, {"deep": "promo-hello"}], "braces": "50% {off}"}


def test_a_structure_fails_at_the_path_of_its_bad_string() -> None:
    """A missing value inside a structure fails all of it, naming the path of the string that failed."""
    value = {"address": {"lines": ["{{ profile.subject_id }}", "{{ profile.traits.street }}"]}, "email": "{{ profile.traits.email }}"}
    message = failure(render_value, value, scope(), where="the traits of step 'update'")
    assert message.startswith("the traits of step 'update'.address.lines[1] failed to render: ") and "'street'" in message


# --- render_message ---------------------------------------------------------------------------


def templates(**parts: str) -> Any:
    """The compiled templates of a journey whose `welcome` template has *parts*."""
    return compiled(journey(send("hello"), templates={"welcome": J.MessageTemplate(**parts)})).templates


def test_a_message_renders_every_part_and_escapes_html_only() -> None:
    """A message renders its address, subject (stripped), text and HTML body; only the HTML body escapes what it inserts."""
    rendered = render_message(templates(subject="  Hi {{ profile.traits.first_name }} \n", text_body="Hello {{ profile.traits.first_name }}",
                                        html_body="<p>Hello {{ profile.traits.first_name }}</p>"),
                              "welcome", "{{ profile.traits.email }}", scope(), step_id="hello")
    assert rendered == {"to": EMAIL, "subject": f"Hi {NAME}", "text_body": f"Hello {NAME}",
                        "html_body": "<p>Hello &lt;b&gt;Ada&lt;/b&gt; &amp; co</p>"}


def test_a_message_without_an_address_or_parts_renders_empty_ones() -> None:
    """No `to` (the channel's default address applies) and missing parts render as empty strings."""
    assert render_message(templates(subject="Hi"), "welcome", "", scope(), step_id="hello") == {
        "to": "", "subject": "Hi", "text_body": "", "html_body": ""}


@pytest.mark.parametrize(("parts", "to", "where"), [
    ({"subject": "Hi {{ profile.traits.nickname }}"}, "", "template 'welcome' subject"),
    ({"subject": "Hi", "html_body": "<p>{{ event.attributes.coupon }}</p>"}, "", "template 'welcome' html_body"),
    ({"subject": "Hi"}, "{{ profile.traits.work_email }}", "the address of step 'hello'"),
])
def test_a_message_fails_whole_naming_the_part(parts: dict[str, str], to: str, where: str) -> None:
    """A message with a missing value in any part fails as a whole, naming that part and never a value."""
    assert failure(render_message, templates(**parts), "welcome", to, scope(), step_id="hello").startswith(f"{where} failed to render: ")


def test_message_of_reads_send_and_notify_steps() -> None:
    """The (template, to) of a send step and of a notify step."""
    assert message_of(send("hello", to="{{ profile.traits.email }}")) == ("welcome", "{{ profile.traits.email }}")
    notify = step("tell", notify=J.NotifyStep(channel=M.CHANNEL_WEBHOOK, template="alert", to="https://hooks.example.com/x"))
    assert message_of(notify) == ("alert", "https://hooks.example.com/x")


def test_render_of_no_template_is_empty() -> None:
    """Rendering a part the template does not have gives the empty string."""
    assert render(None, scope()) == ""
