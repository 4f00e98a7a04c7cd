"""Rule set versions: immutable and numbered, activated and rolled back by
moving a pointer, pinned evaluation, diffs, and a tamper-evident audit log."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import asyncpg
import grpc
import pytest

from overture.rules.v1 import audit_event_pb2 as A
from overture.rules.v1 import rule_set_pb2 as RS
from overture.rules.v1 import rules_service_pb2 as R
from overture_rules.audit import verify_chain
from overture_runtime.config import Settings
from tests.conftest import ADMIN_TOKEN

from .rules_support import MD, STRING, Rules, running_rules, spec


@pytest.fixture
async def svc(make_settings: Callable[..., Settings]) -> AsyncIterator[Rules]:
    async with running_rules(make_settings) as running:
        yield running


def _plan_rule(expression: str) -> RS.RuleSetSpec:
    return spec(attributes=[("plan", STRING)], rules=[("plan-rule", expression, "require")])


async def _audit(svc: Rules) -> list[A.AuditEvent]:
    events: list[A.AuditEvent] = []
    token = ""
    while True:
        page = await svc.rules.ListAuditEvents(R.ListAuditEventsRequest(page_size=2, page_token=token), metadata=MD)
        events.extend(page.audit_events)
        token = page.next_page_token
        if not token:
            return events


async def test_versions_activate_roll_back_and_pin(svc: Rules) -> None:
    """v1, v2, v3 are published; v2 is activated, then v1 by rollback; pinned evaluation uses the pinned version."""
    for version, expression in enumerate(['plan == "a"', 'plan == "b"', 'plan == "c"'], start=1):
        created = await svc.rules.CreateRuleSetVersion(R.CreateRuleSetVersionRequest(
            rule_set="plans", spec=_plan_rule(expression), reason=f"v{version}", parent_version=version - 1), metadata=MD)
        assert created.rule_set_version.version == version and not created.rule_set_version.active
        assert created.rule_set_version.parent_version == version - 1 and created.rule_set_version.author == "alice@acme"
    await svc.rules.ActivateRuleSetVersion(R.ActivateRuleSetVersionRequest(rule_set="plans", version=2, reason="go b"), metadata=MD)
    rolled = await svc.rules.ActivateRuleSetVersion(R.ActivateRuleSetVersionRequest(rule_set="plans", version=1, reason="b broke"), metadata=MD)
    assert rolled.previous_version == 2
    await svc.profile("u", traits={"plan": "b"})
    await svc.consent("u")
    active = await svc.evaluate(rule_set="plans", subject_id="u")
    pinned = await svc.evaluate(rule_set="plans", subject_id="u", version=2)
    assert (active.version, active.allowed) == (1, False)
    assert (pinned.version, pinned.allowed) == (2, True)
    listed = (await svc.rules.ListRuleSetVersions(R.ListRuleSetVersionsRequest(rule_set="plans", page_size=2), metadata=MD))
    assert [v.version for v in listed.rule_set_versions] == [3, 2] and listed.next_page_token
    rest = await svc.rules.ListRuleSetVersions(R.ListRuleSetVersionsRequest(rule_set="plans", page_token=listed.next_page_token), metadata=MD)
    assert [(v.version, v.active) for v in rest.rule_set_versions] == [(1, True)]
    actions = [e.action for e in await _audit(svc)]
    assert actions == [A.AUDIT_ACTION_RULE_SET_VERSION_CREATED] * 3 + [A.AUDIT_ACTION_RULE_SET_VERSION_ACTIVATED, A.AUDIT_ACTION_RULE_SET_ROLLED_BACK]


async def test_same_content_is_not_a_new_version_and_stale_parents_are_refused(svc: Rules) -> None:
    """Publishing identical content returns the latest version unchanged; a stale parent_version is FAILED_PRECONDITION."""
    first = await svc.rules.CreateRuleSetVersion(R.CreateRuleSetVersionRequest(rule_set="p", spec=_plan_rule('plan == "a"'), reason="r"), metadata=MD)
    same = await svc.rules.CreateRuleSetVersion(R.CreateRuleSetVersionRequest(rule_set="p", spec=_plan_rule('plan == "a"'), reason="r"), metadata=MD)
    assert same.unchanged and same.rule_set_version.digest == first.rule_set_version.digest
    await svc.rules.CreateRuleSetVersion(R.CreateRuleSetVersionRequest(rule_set="p", spec=_plan_rule('plan == "b"'), reason="r"), metadata=MD)
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await svc.rules.CreateRuleSetVersion(R.CreateRuleSetVersionRequest(
            rule_set="p", spec=_plan_rule('plan == "c"'), reason="r", parent_version=1), metadata=MD)
    assert stale.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "latest version (2)" in (stale.value.details() or "")


async def test_diff_names_what_changed(svc: Rules) -> None:
    """The diff between two versions lists the changed expression by rule id."""
    await svc.publish("p", _plan_rule('plan == "a"'), activate=False)
    await svc.publish("p", _plan_rule('plan == "b"'), activate=False)
    diff = await svc.rules.DiffRuleSetVersions(R.DiffRuleSetVersionsRequest(rule_set="p", from_version=1, to_version=2), metadata=MD)
    assert [(c.path, c.kind, c.before, c.after) for c in diff.changes] == [
        ("rules[id=plan-rule].expression", RS.RULE_SET_CHANGE_KIND_CHANGED, '"plan == \\"a\\""', '"plan == \\"b\\""'),
    ]


async def test_the_audit_chain_verifies_and_a_hand_edited_row_is_detected(svc: Rules, database_url: str) -> None:
    """The audit log's hash chain verifies; changing a stored row by hand breaks it at that row."""
    for expression in ['plan == "a"', 'plan == "b"']:
        await svc.publish("p", _plan_rule(expression))
    events = await _audit(svc)
    assert len(events) == 4 and verify_chain(events) is None
    assert all(e.actor == "alice@acme" and e.reason == "test" for e in events)
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute("UPDATE rules_audit_events SET reason = 'nothing to see' WHERE sequence = 2")
    finally:
        await conn.close()
    problem = verify_chain(await _audit(svc))
    assert problem is not None and problem[0] == 2 and "does not match its hash" in problem[1]


async def test_overture_audit_verify_exits_non_zero_on_tampering(svc: Rules, database_url: str, tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """`overture audit verify` reports a verified chain, and the first tampered entry with a non-zero exit."""
    from overture_cli.main import main

    await svc.publish("p", _plan_rule('plan == "a"'))
    monkeypatch.setenv("OVERTURE_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("OVERTURE_RULES_ADDRESS", svc.address)
    monkeypatch.chdir(str(tmp_path))
    assert await _in_thread(main, ["audit", "verify"]) == 0
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute("UPDATE rules_audit_events SET actor = 'mallory' WHERE sequence = 1")
    finally:
        await conn.close()
    assert await _in_thread(main, ["audit", "verify"]) == 1


async def _in_thread(fn: Callable[[list[str]], int], argv: list[str]) -> int:
    import asyncio

    return await asyncio.to_thread(fn, argv)
