"""Branches on real services: a condition and a multi-split route by the
profile and the event; an A/B split is the same for a subject every time and
follows its weights; a holdout branch sends nothing but is counted, with
its conversions, against the treatment."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from overture.orchestrator.v1 import run_pb2
from tests.integration import journeys_support
from tests.integration.journeys_support import World, event
from tests.thinpath import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")
world = journeys_support.world


async def test_a_condition_routes_each_subject_by_its_profile(world: World) -> None:
    """A condition on the profile sends pro customers the tips and everyone else the upgrade offer, leaving by `true` or `false`."""
    await world.publish("branch-plan")
    pro = await world.person("cond-pro", plan="pro")
    basic = await world.person("cond-basic", plan="basic")
    await world.ingest(event("plan.reviewed", "cond-pro"), event("plan.reviewed", "cond-basic"))
    pro_run = await world.ended((await world.run_of("branch-plan", "cond-pro")).run_id)
    basic_run = await world.ended((await world.run_of("branch-plan", "cond-basic")).run_id)
    assert world.path(pro_run) == [("is-pro", "true"), ("send-tips", "next")]
    assert world.path(basic_run) == [("is-pro", "false"), ("send-upgrade", "next")]
    assert [m["Subject"] for m in world.mail_to(pro)] == ["Pro tips"]
    assert [m["Subject"] for m in world.mail_to(basic)] == ["Go pro"]


async def test_a_multi_split_takes_the_first_case_that_holds_on_the_event_or_the_profile_else_the_default(world: World) -> None:
    """A multi-split routes a big order by its event, a VIP's small order by the profile, a VIP's big order by the first case, and the rest to the default."""
    await world.publish("order-routing")
    subjects = {"ms-big": (150, False), "ms-vip": (20, True), "ms-vip-big": (300, True), "ms-plain": (20, False)}
    addresses = {s: await world.person(s) for s in subjects}
    await world.ingest(*(event("segment.entered", s, segment="vip") for s, (_, vip) in subjects.items() if vip))
    await world.ingest(*(event("order.completed", s, total=total) for s, (total, _) in subjects.items()))
    edges = {}
    for subject in subjects:
        run = await world.ended((await world.run_of("order-routing", subject)).run_id)
        assert run.state == run_pb2.RUN_STATE_COMPLETED
        edges[subject] = world.step(run, "route").edge
    assert edges == {"ms-big": "big-order", "ms-vip": "vip", "ms-vip-big": "big-order", "ms-plain": "default"}
    subjects_of = {s: [m["Subject"] for m in world.mail_to(a)] for s, a in addresses.items()}
    assert subjects_of == {"ms-big": ["Thanks for your big order"], "ms-vip": ["Thanks VIP"], "ms-vip-big": ["Thanks for your big order"],
                           "ms-plain": ["Thanks"]}


async def test_an_ab_split_is_the_same_for_a_subject_every_time_and_follows_its_weights(world: World) -> None:
    """Over 200 subjects a 3:1 split gives branch a about three quarters (within four standard deviations), and a subject's second run takes its first run's branch."""
    await world.publish("ab-weights")
    subjects = [f"ab-{i:03d}" for i in range(200)]
    first: dict[str, str] = {}
    for round_ in (1, 2):
        await world.ingest(*(event("ab.entered", s, f"ab-{round_}-{s}") for s in subjects))

        async def all_ended(round_: int = round_) -> list[run_pb2.Run] | None:
            runs = [r for r in await world.runs("ab-weights") if r.trigger_event_id.startswith(f"ab-{round_}-")]
            return runs if len(runs) == len(subjects) and all(r.state == run_pb2.RUN_STATE_COMPLETED for r in runs) else None

        runs = await eventually(all_ended, what=f"round {round_} of the split")
        arms = {r.subject_id: list(r.arms) for r in runs}
        assert all(len(a) == 1 for a in arms.values())
        if round_ == 1:
            first = {s: a[0] for s, a in arms.items()}
        else:
            assert {s: a[0] for s, a in arms.items()} == first  # deterministic per subject
    counts = Counter(first.values())
    expected, sd = 200 * 0.75, math.sqrt(200 * 0.75 * 0.25)
    assert abs(counts["split:a"] - expected) <= 4 * sd, counts
    assert counts["split:a"] + counts["split:b"] == 200
    stats = await world.stats("ab-weights")
    assert {(a.arm, a.entered, a.holdout) for a in stats.arms} == {("a", 2 * counts["split:a"], False), ("b", 2 * counts["split:b"], False)}
    (split,) = [s for s in stats.steps if s.step_id == "split"]
    assert dict(split.edges) == {"a": 2 * counts["split:a"], "b": 2 * counts["split:b"]}


async def test_a_holdout_branch_sends_nothing_but_is_counted_with_its_conversions(world: World) -> None:
    """Subjects in the holdout branch get no email (their send step is skipped) yet are counted, and purchases convert both branches, so uplift can be read from the arms."""
    await world.publish("ab-holdout")
    subjects = [f"ho-{i}" for i in range(12)]
    addresses = {s: await world.person(s) for s in subjects}
    await world.ingest(*(event("offer.eligible", s) for s in subjects))
    runs = {s: await world.waiting_at((await world.run_of("ab-holdout", s)).run_id, "week") for s in subjects}
    control = sorted(s for s, r in runs.items() if r.holdout)
    treatment = sorted(s for s, r in runs.items() if not r.holdout)
    assert control and treatment  # both branches have subjects (the split is deterministic for these ids)
    assert all(runs[s].arms == ["split:control"] for s in control) and all(runs[s].arms == ["split:treatment"] for s in treatment)
    await world.mail_settles([addresses[s] for s in treatment], len(treatment))
    assert world.mail_to(*(addresses[s] for s in control)) == []
    assert {world.step(runs[s], "offer").outcome for s in control} == {"holdout: not sent"}
    assert {world.step(runs[s], "offer").state for s in control} == {run_pb2.STEP_RUN_STATE_SKIPPED}
    buyers = [control[0], *treatment[:2]]
    await world.ingest(*(event("purchase.made", s) for s in buyers))
    for s in subjects:
        run = await world.ended(runs[s].run_id) if s in buyers else await world.run(runs[s].run_id)
        assert run.converted == (s in buyers), s
    stats = await world.stats("ab-holdout")
    assert {(a.arm, a.holdout, a.entered, a.converted) for a in stats.arms} == {
        ("control", True, len(control), 1), ("treatment", False, len(treatment), 2)}
    assert (stats.entered, stats.converted) == (12, 3)
