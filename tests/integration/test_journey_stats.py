"""Operations on real services and the injected clock: GetJourneyStats'
counters after runs that convert, complete, are denied and fail; and
ListStepTypes describing every trigger and step kind of the contract."""

from __future__ import annotations

import datetime as dt

import pytest
from google.protobuf import duration_pb2

from overture.orchestrator.v1 import journey_pb2 as J
from overture.orchestrator.v1 import orchestrator_service_pb2 as O
from overture.orchestrator.v1 import run_pb2
from overture_orchestrator.stepcheck import SUPPORTED_STEPS
from tests.conftest import READER_TOKEN, admin_metadata
from tests.integration import journeys_support
from tests.integration.journeys_support import World, event

pytestmark = pytest.mark.asyncio(loop_scope="module")
world = journeys_support.world
DAY = dt.timedelta(days=1)
FIELD_TYPES = {"string", "duration", "timestamp", "expression", "template", "template_name", "step", "enum", "bool", "int", "struct",
               "object", "list", "map"}
"""The field types StepField.type's comment lists."""


def _seconds(value: duration_pb2.Duration) -> float:
    return value.ToTimedelta().total_seconds()


async def test_journey_stats_count_runs_steps_edges_latency_and_sends_after_a_mix_of_outcomes(world: World) -> None:
    """Five members: a pro who buys (converted), two who complete (one denied for consent, so skipped), one whose template cannot render and one whose address the connector refuses (both failed); the counters say so."""
    await world.publish("stats-mix")
    await world.person("mix-pro", first_name="Pam", plan="pro")
    await world.person("mix-basic", first_name="Ben", plan="basic")
    await world.person("mix-no-consent", consent=False, first_name="Nia", plan="basic")
    await world.person("mix-no-name", plan="basic")
    await world.person("mix-bad-address", first_name="Bo", plan="basic", email="not-an-address")
    subjects = ["mix-pro", "mix-basic", "mix-no-consent", "mix-no-name", "mix-bad-address"]
    await world.ingest(*(event("member.joined", s) for s in subjects))
    runs = {s: (await world.run_of("stats-mix", s)).run_id for s in subjects}
    for s in ("mix-pro", "mix-basic", "mix-no-consent"):
        await world.waiting_at(runs[s], "day")
    for s in ("mix-no-name", "mix-bad-address"):
        assert (await world.ended(runs[s])).state == run_pb2.RUN_STATE_FAILED
    await world.ingest(event("purchase.done", "mix-pro"))
    assert (await world.ended(runs["mix-pro"])).converted
    await world.advance(DAY)
    for s in ("mix-basic", "mix-no-consent"):
        assert (await world.ended(runs[s])).state == run_pb2.RUN_STATE_COMPLETED
    stats = await world.stats("stats-mix")
    assert (stats.entered, stats.completed, stats.converted, stats.failed, stats.dead_lettered, stats.cancelled, stats.active,
            stats.skipped_entries) == (5, 3, 1, 2, 2, 0, 0, 0)
    steps = {s.step_id: s for s in stats.steps}
    assert list(steps) == ["is-pro", "welcome-pro", "welcome", "day"]  # in the journey's order
    counts = {k: (s.entered, s.completed, s.skipped, s.failed, s.waiting, dict(s.edges)) for k, s in steps.items()}
    assert counts == {
        "is-pro": (5, 5, 0, 0, 0, {"true": 1, "false": 4}),
        "welcome-pro": (1, 1, 0, 0, 0, {"next": 1}),
        "welcome": (4, 1, 1, 2, 0, {"next": 2}),
        "day": (3, 2, 0, 0, 0, {"next": 2}),
    }
    assert [k for k, s in steps.items() if not (s.HasField("latency_p50") and s.HasField("latency_p95") and s.HasField("latency_p99"))] == []
    assert [_seconds(getattr(steps["day"], q)) for q in ("latency_p50", "latency_p95", "latency_p99")] == [86400.0] * 3
    assert _seconds(steps["is-pro"].latency_p99) <= 0.01  # decided at once (the histogram's first bucket)
    assert stats.send_success_rate == pytest.approx(2 / 3)  # two sent; one decided, then refused by the connector
    one_version = (await world.c.orchestrator.GetJourneyStats(O.GetJourneyStatsRequest(name="stats-mix", version=1),
                                                              metadata=admin_metadata(READER_TOKEN))).stats
    assert one_version.version == 1 and one_version.steps == stats.steps and one_version.entered == stats.entered


async def test_list_step_types_describes_every_trigger_and_step_kind_the_release_runs(world: World) -> None:
    """Every trigger kind of the contract, and every step kind but those publish refuses, is described with a title, its group, its edges and exactly its message's fields, typed as the contract lists."""
    types = await world.c.orchestrator.ListStepTypes(O.ListStepTypesRequest(), metadata=admin_metadata(READER_TOKEN))
    triggers = J.JourneyTrigger.DESCRIPTOR.oneofs_by_name["kind"].fields
    steps = J.Step.DESCRIPTOR.oneofs_by_name["kind"].fields
    assert [t.kind for t in types.triggers] == [f.name for f in triggers]
    assert [s.kind for s in types.steps] == [f.name for f in steps if f.name in SUPPORTED_STEPS]
    by_kind = {f.name: f.message_type for f in [*triggers, *steps]}
    for described in [*types.triggers, *types.steps]:
        assert described.title and described.description, described.kind
        assert [f.name for f in described.fields] == [f.name for f in by_kind[described.kind].fields], described.kind
        assert {f.type for f in described.fields} <= FIELD_TYPES, described.kind
        assert all(f.values for f in described.fields if f.type == "enum"), described.kind
    assert {t.category for t in types.triggers} == {"trigger"}
    assert {s.category for s in types.steps} == {"flow", "action", "wait"}
    edges = {s.kind: list(s.edges) for s in types.steps}
    # The edges the runs of these tests leave by (test_journey_branches, _waits, _approvals, _delays, _parallel): the catalogue names them.
    assert {k: edges[k] for k in ("condition", "multi_split", "split", "delay", "wait_for_event", "wait_until", "approval", "parallel",
                                  "join", "send", "exit")} == {
        "condition": ["true", "false"], "multi_split": ["<case name>", "default"], "split": ["<branch name>"], "delay": ["next", "missing"],
        "wait_for_event": ["event", "timeout"], "wait_until": ["true", "timeout"], "approval": ["approved", "rejected"],
        "parallel": ["branch:<n>"], "join": ["next"], "send": ["next"], "exit": []}
