"""Dry-run decisions, for previews and backtests: the verdicts a CHECK gives
(caps counted as they stand), on the stored profile or on one the caller
sends, with nothing reserved, nothing stored and no decision id."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from overture.rules.v1 import decision_pb2 as D
from overture.rules.v1 import profile_pb2
from overture.rules.v1 import rules_service_pb2 as R
from overture_runtime.config import Settings

from .rules_support import EMAIL, MD, STRING, Rules, cap, field_violations, running_rules, spec


@pytest.fixture
async def svc(make_settings: Callable[..., Settings]) -> AsyncIterator[Rules]:
    async with running_rules(make_settings) as running:
        await running.publish("capped", spec(caps=[cap("daily", 2)], attributes=[("plan", STRING)],
                                             rules=[("no-churned", 'plan == "churned"', "deny")]))
        yield running


async def _stored(svc: Rules, subject: str) -> list[D.Decision]:
    return list((await svc.rules.ListDecisions(R.ListDecisionsRequest(subject_id=subject), metadata=MD)).decisions)


async def test_a_dry_run_decides_like_a_check_and_leaves_nothing_behind(svc: Rules) -> None:
    """A dry run counts the caps as they stand and is denied by a full one, but has no id, is not stored and reserves nothing."""
    await svc.consent("u")
    first = await svc.evaluate(rule_set="capped", subject_id="u", dry_run=True)
    assert first.allowed and not first.decision_id and [c.count for c in first.cap_counters] == [0]
    assert first.mode == D.EVALUATION_MODE_CHECK and await _stored(svc, "u") == []
    for _ in range(2):  # fill the cap for real
        assert (await svc.evaluate(rule_set="capped", subject_id="u", mode=D.EVALUATION_MODE_RESERVE_AND_COMMIT)).allowed
    full = await svc.evaluate(rule_set="capped", subject_id="u", dry_run=True)
    assert not full.allowed and "frequency cap" in full.summary and [c.count for c in full.cap_counters] == [2]
    assert len(await _stored(svc, "u")) == 2
    check = await svc.evaluate(rule_set="capped", subject_id="u")  # an ordinary CHECK agrees, and is stored
    assert [v.outcome for v in check.verdicts] == [v.outcome for v in full.verdicts] and check.decision_id


async def test_a_dry_run_on_a_given_profile_ignores_the_stored_one(svc: Rules) -> None:
    """A profile sent with the dry run decides it: consent and traits it holds count, the stored profile neither helps nor changes."""
    await svc.profile("p", traits={"plan": "pro"})  # no consent stored: a normal decision is denied
    assert not (await svc.evaluate(rule_set="capped", subject_id="p", dry_run=True)).allowed
    given = profile_pb2.Profile(consents=[profile_pb2.Consent(channel=EMAIL, purpose="marketing", status=profile_pb2.CONSENT_STATUS_GRANTED)])
    given.traits.update({"plan": "pro"})
    assert (await svc.evaluate(rule_set="capped", subject_id="p", dry_run=True, profile=given)).allowed
    given.traits.update({"plan": "churned"})
    churned = await svc.evaluate(rule_set="capped", subject_id="nobody-yet", dry_run=True, profile=given)
    assert not churned.allowed and "no-churned" in churned.summary
    erased = await svc.evaluate(rule_set="capped", subject_id="p", dry_run=True, profile=profile_pb2.Profile(erased=True))
    assert not erased.allowed and "erased" in erased.summary
    assert await _stored(svc, "p") == [] and await _stored(svc, "nobody-yet") == []


async def test_a_batch_mixes_dry_runs_and_real_decisions(svc: Rules) -> None:
    """In one EvaluateBatch, the real decisions are stored and reserve, the dry runs beside them neither."""
    await svc.consent("m")
    response = await svc.rules.EvaluateBatch(R.EvaluateBatchRequest(requests=[
        R.EvaluateRequest(rule_set="capped", subject_id="m", channel=EMAIL, dry_run=True),
        R.EvaluateRequest(rule_set="capped", subject_id="m", channel=EMAIL, mode=D.EVALUATION_MODE_RESERVE),
        R.EvaluateRequest(rule_set="capped", subject_id="m", channel=EMAIL, dry_run=True, mode=D.EVALUATION_MODE_RESERVE),
    ]), metadata=MD)
    dry, real, refused = response.results
    assert dry.decision.allowed and not dry.decision.decision_id
    assert real.decision.reservation_state == D.RESERVATION_STATE_HELD
    assert [v.field for v in refused.violations] == ["dry_run"]
    assert [d.decision_id for d in await _stored(svc, "m")] == [real.decision.decision_id]
    after = await svc.evaluate(rule_set="capped", subject_id="m", dry_run=True)
    assert [c.count for c in after.cap_counters] == [1]  # the held reservation counts, the dry runs did not


async def test_a_dry_run_with_what_it_cannot_take_is_refused(svc: Rules) -> None:
    """A dry run that would reserve or names a decision id, and a profile without a dry run, are field violations."""
    cases = [
        (dict(dry_run=True, mode=D.EVALUATION_MODE_RESERVE_AND_COMMIT), "dry_run"),
        (dict(dry_run=True, decision_id="mine"), "decision_id"),
        (dict(profile=profile_pb2.Profile()), "profile"),
        (dict(dry_run=True, profile=profile_pb2.Profile(subject_id="someone-else")), "profile.subject_id"),
        (dict(dry_run=True, profile=profile_pb2.Profile(consents=[profile_pb2.Consent(purpose="marketing")])), "profile.consents[0].channel"),
    ]
    for fields, where in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await svc.evaluate(rule_set="capped", subject_id="u", **fields)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and where in field_violations(caught.value), fields
