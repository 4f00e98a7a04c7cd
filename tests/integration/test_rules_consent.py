"""Compliance fails closed: missing or revoked consent and an unreachable
store deny marketing; transactional messages skip marketing consent but
never suppression or erasure."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from overture.rules.v1 import decision_pb2 as D
from overture.rules.v1 import profile_service_pb2
from overture.rules.v1 import rules_service_pb2 as R
from overture_rules.profile_cache import SubjectKeys
from overture_runtime.config import Settings
from tests.conftest import TENANT

from .rules_support import MD, Rules, cap, running_rules, spec

TRANSACTIONAL = 2


@pytest.fixture
async def svc(make_settings: Callable[..., Settings]) -> AsyncIterator[Rules]:
    async with running_rules(make_settings, profile_read_timeout_seconds=0.5) as running:
        await running.publish("email", spec(lists=["hard-bounces"]))
        yield running


def _denied_by(decision: D.Decision) -> list[tuple[int, str]]:
    return [(v.kind, v.id) for v in decision.verdicts if v.outcome in (D.VERDICT_OUTCOME_DENY, D.VERDICT_OUTCOME_ERROR)]


async def test_missing_consent_denies_marketing_but_not_transactional(svc: Rules) -> None:
    """No consent record denies marketing (and the decision says so); a transactional message is allowed."""
    await svc.profile("u", traits={"email": "u@example.com"})
    marketing = await svc.evaluate(rule_set="email", subject_id="u")
    assert not marketing.allowed and _denied_by(marketing) == [(D.VERDICT_KIND_CONSENT, "email/marketing")]
    assert "no consent record" in marketing.summary
    transactional = await svc.evaluate(rule_set="email", subject_id="u", category=TRANSACTIONAL)
    assert transactional.allowed


async def test_revoked_consent_denies_marketing(svc: Rules) -> None:
    """A consent granted then revoked denies marketing; granting again allows it."""
    await svc.consent("u")
    assert (await svc.evaluate(rule_set="email", subject_id="u")).allowed
    await svc.consent("u", granted=False)
    revoked = await svc.evaluate(rule_set="email", subject_id="u")
    assert not revoked.allowed and "revoked" in revoked.summary
    await svc.consent("u")
    assert (await svc.evaluate(rule_set="email", subject_id="u")).allowed


async def test_suppression_and_erasure_deny_transactional_too(svc: Rules) -> None:
    """A subject on a suppression list, or erased, is denied even transactional messages."""
    await svc.consent("bounced")
    await svc.profile("bounced", lists=["hard-bounces"])
    decision = await svc.evaluate(rule_set="email", subject_id="bounced", category=TRANSACTIONAL)
    assert not decision.allowed and _denied_by(decision) == [(D.VERDICT_KIND_SUPPRESSION, "hard-bounces")]

    await svc.consent("gone")
    await svc.profiles.EraseProfile(profile_service_pb2.EraseProfileRequest(subject_id="gone", reason="GDPR request"), metadata=MD)
    erased = await svc.evaluate(rule_set="email", subject_id="gone", category=TRANSACTIONAL)
    assert not erased.allowed and (D.VERDICT_KIND_ERASURE, "erasure") in _denied_by(erased)


async def test_an_unreachable_consent_store_denies_and_says_why(svc: Rules, database_url: str) -> None:
    """When the consent store cannot be read in time, marketing (and transactional) is denied with a system verdict."""
    await svc.consent("u")
    # Hold an exclusive lock on the consent table from another session: reads
    # of it block, and the decision's read times out.
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
    locker = await asyncpg.connect(dsn)
    try:
        async with locker.transaction():
            await locker.execute("LOCK TABLE rules_consents IN ACCESS EXCLUSIVE MODE")
            marketing = await svc.evaluate(rule_set="email", subject_id="never-read")
            transactional = await svc.evaluate(rule_set="email", subject_id="never-read", category=TRANSACTIONAL)
    finally:
        await locker.close()
    for decision in (marketing, transactional):
        assert not decision.allowed
        assert _denied_by(decision) == [(D.VERDICT_KIND_SYSTEM, "profile-store")]
        assert "could not be read" in decision.summary
    # Once the store answers again, decisions are made normally.
    await asyncio.sleep(0)
    assert not (await svc.evaluate(rule_set="email", subject_id="never-read")).allowed  # no consent: a real verdict now
    again = await svc.evaluate(rule_set="email", subject_id="never-read")
    assert _denied_by(again) == [(D.VERDICT_KIND_CONSENT, "email/marketing")]


async def test_a_consent_change_is_seen_at_once_despite_the_cache(svc: Rules) -> None:
    """The profile cache is invalidated on write: a revocation takes effect on the next decision."""
    await svc.consent("u")
    for _ in range(3):  # warm the cache
        assert (await svc.evaluate(rule_set="email", subject_id="u")).allowed
    await svc.consent("u", granted=False)
    assert not (await svc.evaluate(rule_set="email", subject_id="u")).allowed


async def test_an_unreachable_cap_store_denies_capped_marketing(make_settings: Callable[..., Settings], throwaway_redis: Callable[[], str]) -> None:
    """With Redis down, a capped marketing message is denied (fail closed); a transactional one is still decided from PostgreSQL."""
    async with running_rules(make_settings, redis_url=throwaway_redis()) as svc:
        await svc.publish("capped", spec(caps=[cap("daily", 5)]))
        await svc.consent("u")
        assert (await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE)).allowed
        subprocess.run(["redis-cli", "-u", svc.app.settings.redis_url, "shutdown", "nosave"], check=False, capture_output=True)
        marketing = await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE)
        assert not marketing.allowed and _denied_by(marketing) == [(D.VERDICT_KIND_SYSTEM, "cap-ledger")]
        transactional = await svc.evaluate(rule_set="capped", subject_id="u", category=TRANSACTIONAL)
        assert transactional.allowed


async def test_erasure_leaves_no_personal_data_in_decisions_or_audit(svc: Rules) -> None:
    """After erasure the subject's decisions are filed under a pseudonym without the profile snapshot, the audit entry
    names only the pseudonym, and no key of the subject's frequency-cap ledger is left in Redis."""

    await svc.profile("erin@example.com", traits={"first_name": "Erin"})
    await svc.consent("erin@example.com")
    decision = await svc.evaluate(rule_set="email", subject_id="erin@example.com")
    await svc.publish("capped", spec(caps=[cap("three", 3)]))
    held = await svc.evaluate(rule_set="capped", subject_id="erin@example.com", mode=D.EVALUATION_MODE_RESERVE)
    ledger = SubjectKeys.of(svc.app.keys, TENANT, "erin@example.com").ledger
    assert held.allowed and await svc.app.redis.exists(*ledger) == 4  # the counted, held and e-mail entries, and the hash
    erased = await svc.profiles.EraseProfile(profile_service_pb2.EraseProfileRequest(subject_id="erin@example.com", reason="GDPR"), metadata=MD)
    stored = (await svc.rules.GetDecision(R.GetDecisionRequest(decision_id=decision.decision_id), metadata=MD)).decision
    assert stored.subject_id == erased.pseudonymous_id and not stored.profile_snapshot.fields
    assert "erin" not in str(stored).lower()
    events = (await svc.rules.ListAuditEvents(R.ListAuditEventsRequest(), metadata=MD)).audit_events
    assert events[-1].target == f"profile/{erased.pseudonymous_id}" and "erin" not in str(events[-1]).lower()
    assert (await svc.rules.ListDecisions(R.ListDecisionsRequest(subject_id="erin@example.com"), metadata=MD)).decisions == []
    assert await svc.app.redis.exists(*ledger) == 0


async def test_a_subjects_decisions_list_newest_first_across_pages_whatever_their_ids(svc: Rules) -> None:
    """ListDecisions pages newest first by when each decision was stored, even when the caller's decision ids sort the other way."""
    await svc.publish("marketing", spec())
    for decision_id in ("z-first", "m-second", "a-third"):
        await svc.evaluate(rule_set="marketing", subject_id="pat", decision_id=decision_id, mode=D.EVALUATION_MODE_RESERVE)
    first = await svc.rules.ListDecisions(R.ListDecisionsRequest(subject_id="pat", page_size=2), metadata=MD)
    assert [d.decision_id for d in first.decisions] == ["a-third", "m-second"] and first.next_page_token
    rest = await svc.rules.ListDecisions(R.ListDecisionsRequest(subject_id="pat", page_size=2, page_token=first.next_page_token), metadata=MD)
    assert [d.decision_id for d in rest.decisions] == ["z-first"] and not rest.next_page_token
