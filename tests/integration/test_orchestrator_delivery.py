"""A send whose provider is down is retried with backoff and delivered
exactly once when the provider comes back; the run shows the attempts."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from overture.common.v1 import event_pb2
from overture.ingest.v1 import ingest_service_pb2 as I
from overture.orchestrator.v1 import orchestrator_service_pb2 as O
from overture.orchestrator.v1 import run_pb2
from overture_runtime.config import Settings
from tests.conftest import admin_metadata
from tests.thinpath import eventually, example_journey

from .cluster import running_cluster
from .test_thin_path import _event, publish_tour

MD = admin_metadata()


async def test_a_send_is_retried_until_the_provider_is_back_and_sent_once(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """With the SMTP server down the step waits and retries; once it is up the email arrives exactly once."""
    async with running_cluster(make_settings, tmp_path / "mail", mail_up=False) as c:
        await publish_tour(c)
        await c.ingest.IngestEvents(I.IngestEventsRequest(events=[
            _event("identify", "ann", traits={"email": "ann@example.com", "first_name": "Ann"}),
            _event("consent.granted", "ann", channel="email", purpose="marketing"),
            _event("user.signed_up", "ann", "retry-signup"),
        ]), metadata=MD)

        async def waiting() -> run_pb2.Run | None:
            runs = (await c.orchestrator.ListRuns(O.ListRunsRequest(subject_id="ann"), metadata=MD)).runs
            return runs[0] if runs and runs[0].state == run_pb2.RUN_STATE_WAITING and runs[0].steps[0].error else None

        stalled = await eventually(waiting, what="the send to wait for a retry")
        assert "no SMTP session could be opened" in stalled.steps[0].error and stalled.steps[0].HasField("wake_time")
        c.mail.start()

        async def completed() -> run_pb2.Run | None:
            run = (await c.orchestrator.GetRun(O.GetRunRequest(run_id=stalled.run_id), metadata=MD)).run
            return run if run.state == run_pb2.RUN_STATE_COMPLETED else None

        done = await eventually(completed, within=30, what="the retried send to complete")
        assert done.steps[0].outcome == "sent" and done.steps[0].attempts >= 2
        assert [m["To"] for m in c.mail.messages] == ["ann@example.com"]
        # A repeat of the trigger event changes nothing.
        again = event_pb2.Event(event_type="user.signed_up", subject_id="ann", event_id="retry-signup")
        (result,) = (await c.ingest.IngestEvents(I.IngestEventsRequest(events=[again]), metadata=MD)).results
        assert result.status == I.EVENT_RESULT_STATUS_DUPLICATE
        assert len(c.mail.messages) == 1


async def test_a_failed_run_is_dead_lettered_listed_and_redriven(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """A send the connector refuses for good fails the run into the dead-letter list; after the cause is fixed, a re-drive delivers it."""
    from overture.rules.v1 import profile_service_pb2 as P

    async with running_cluster(make_settings, tmp_path / "mail") as c:
        await publish_tour(c)
        await c.ingest.IngestEvents(I.IngestEventsRequest(events=[
            _event("identify", "bea", traits={"email": "not-an-address"}),
            _event("consent.granted", "bea", channel="email", purpose="marketing"),
            _event("user.signed_up", "bea", "dlq-signup"),
        ]), metadata=MD)

        async def dead() -> list[run_pb2.Run] | None:
            found = (await c.orchestrator.ListDeadLetters(O.ListDeadLettersRequest(journey="welcome"), metadata=MD)).runs
            return list(found) or None

        (failed,) = await eventually(dead, what="the run in the dead-letter list")
        assert failed.state == run_pb2.RUN_STATE_FAILED and "not a valid email address" in failed.steps[0].error
        request = P.UpsertProfileRequest(subject_id="bea")
        request.traits.update({"email": "bea@example.com"})
        await c.profiles.UpsertProfile(request, metadata=MD)
        redriven = await c.orchestrator.RedriveDeadLetters(O.RedriveDeadLettersRequest(journey="welcome", reason="address fixed"), metadata=MD)
        assert redriven.redriven_count == 1

        async def delivered() -> run_pb2.Run | None:
            run = (await c.orchestrator.GetRun(O.GetRunRequest(run_id=failed.run_id), metadata=MD)).run
            return run if run.state == run_pb2.RUN_STATE_COMPLETED else None

        done = await eventually(delivered, what="the re-driven run to complete")
        assert done.steps[0].outcome == "sent" and [m["To"] for m in c.mail.messages] == ["bea@example.com"]
        assert (await c.orchestrator.ListDeadLetters(O.ListDeadLettersRequest(), metadata=MD)).runs == []
        again = await c.orchestrator.RedriveDeadLetters(O.RedriveDeadLettersRequest(run_ids=[failed.run_id]), metadata=MD)
        assert again.redriven_count == 0


async def test_a_reported_bounce_suppresses_the_subject_and_becomes_an_event(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """A BOUNCED report marks the step, puts the subject on hard-bounces (so the next send is denied), and arrives as email.bounced with its causation."""
    from overture.common.v1 import messaging_pb2

    async with running_cluster(make_settings, tmp_path / "mail") as c:
        await publish_tour(c)
        await c.ingest.IngestEvents(I.IngestEventsRequest(events=[
            _event("identify", "cy", traits={"email": "cy@example.com"}),
            _event("consent.granted", "cy", channel="email", purpose="marketing"),
            _event("user.signed_up", "cy", "bounce-signup"),
        ]), metadata=MD)

        async def sent() -> run_pb2.Run | None:
            runs = (await c.orchestrator.ListRuns(O.ListRunsRequest(subject_id="cy"), metadata=MD)).runs
            return runs[0] if runs and runs[0].state == run_pb2.RUN_STATE_COMPLETED else None

        run = await eventually(sent, what="the welcome email")
        step = run.steps[0]
        report = O.ReportDeliveryStatusRequest(idempotency_key=f"{run.run_id}:{step.step_id}", delivery_id=step.delivery_id,
                                               status=messaging_pb2.DELIVERY_STATUS_BOUNCED, detail="550 mailbox unavailable")
        for _ in range(2):  # a repeated report is harmless
            await c.orchestrator.ReportDeliveryStatus(report, metadata=MD)
        updated = (await c.orchestrator.GetRun(O.GetRunRequest(run_id=run.run_id), metadata=MD)).run
        assert updated.steps[0].outcome.startswith("delivery bounced")
        stored = (await c.ingest.GetEvent(I.GetEventRequest(event_id=f"delivery:{step.delivery_id}:bounced"), metadata=MD)).event
        assert stored.event.event_type == "email.bounced" and stored.event.subject_id == "cy"
        assert stored.event.causation.depth == 1 and stored.event.causation.root_event_id == "bounce-signup"
        assert stored.event.causation.run_id == run.run_id
        await c.ingest.IngestEvents(I.IngestEventsRequest(events=[_event("user.signed_up", "cy", "second-signup")]), metadata=MD)

        async def second() -> run_pb2.Run | None:
            runs = (await c.orchestrator.ListRuns(O.ListRunsRequest(subject_id="cy"), metadata=MD)).runs
            later = [r for r in runs if r.trigger_event_id == "second-signup" and r.state == run_pb2.RUN_STATE_COMPLETED]
            return later[0] if later else None

        denied = await eventually(second, what="the second run")
        assert denied.steps[0].state == run_pb2.STEP_RUN_STATE_SKIPPED and "hard-bounces" in denied.steps[0].outcome
        assert len(c.mail.messages) == 1


async def test_events_caused_past_the_depth_limit_pause_the_journey(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """An event caused by a journey, at or past a journey's causation depth limit, pauses that journey instead of starting a run."""
    from overture.common.v1 import messaging_pb2
    from overture.orchestrator.v1 import journey_pb2 as J

    async with running_cluster(make_settings, tmp_path / "mail") as c:
        await publish_tour(c)
        follow_up = J.JourneySpec(trigger=J.JourneyTrigger(event=J.EventTrigger(event_type="email.bounced")),
                                  steps=[J.Step(id="stop", exit=J.ExitStep(goal="noted"))], settings=J.JourneySettings(max_causation_depth=1))
        await c.orchestrator.PublishJourney(O.PublishJourneyRequest(name="bounce-follow-up", spec=follow_up), metadata=MD)
        await c.ingest.IngestEvents(I.IngestEventsRequest(events=[
            _event("identify", "dee", traits={"email": "dee@example.com"}),
            _event("consent.granted", "dee", channel="email", purpose="marketing"),
            _event("user.signed_up", "dee", "loop-signup"),
        ]), metadata=MD)

        async def sent() -> run_pb2.Run | None:
            runs = (await c.orchestrator.ListRuns(O.ListRunsRequest(subject_id="dee", journey="welcome"), metadata=MD)).runs
            return runs[0] if runs and runs[0].state == run_pb2.RUN_STATE_COMPLETED else None

        run = await eventually(sent, what="the welcome email")
        await c.orchestrator.ReportDeliveryStatus(O.ReportDeliveryStatusRequest(
            idempotency_key=f"{run.run_id}:{run.steps[0].step_id}", status=messaging_pb2.DELIVERY_STATUS_BOUNCED), metadata=MD)

        async def paused() -> J.Journey | None:
            journey = (await c.orchestrator.GetJourney(O.GetJourneyRequest(name="bounce-follow-up"), metadata=MD)).journey
            return journey if journey.state == J.JOURNEY_STATE_PAUSED else None

        await eventually(paused, what="the follow-up journey to pause")
        assert (await c.orchestrator.ListRuns(O.ListRunsRequest(journey="bounce-follow-up"), metadata=MD)).runs == []


async def test_enqueue_sends_one_message_per_request_id(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """Enqueue sends a one-off transactional message (no marketing consent needed) once per request id; marketing still needs consent."""
    from overture.common.v1 import messaging_pb2
    from overture.orchestrator.v1 import journey_pb2 as J

    async with running_cluster(make_settings, tmp_path / "mail") as c:
        await publish_tour(c)
        await c.ingest.IngestEvents(I.IngestEventsRequest(events=[_event("identify", "eve", traits={"email": "eve@example.com"})]), metadata=MD)
        receipt = O.EnqueueRequest(subject_id="eve", channel=messaging_pb2.CHANNEL_EMAIL, rule_set="marketing-email",
                                   category=messaging_pb2.MESSAGE_CATEGORY_TRANSACTIONAL, request_id="receipt-42",
                                   template=J.MessageTemplate(subject="Your receipt", text_body="Order {{ event.attributes.order }} is paid."))
        receipt.context.update({"order": "A-42"})
        first = (await c.orchestrator.Enqueue(receipt, metadata=MD)).run
        again = (await c.orchestrator.Enqueue(receipt, metadata=MD)).run
        assert first.run_id == again.run_id
        promo = O.EnqueueRequest(subject_id="eve", channel=messaging_pb2.CHANNEL_EMAIL, rule_set="marketing-email", request_id="promo-1",
                                 template=J.MessageTemplate(subject="Sale", text_body="50% off"))
        denied_run = (await c.orchestrator.Enqueue(promo, metadata=MD)).run

        async def ended(run_id: str) -> run_pb2.Run | None:
            run = (await c.orchestrator.GetRun(O.GetRunRequest(run_id=run_id), metadata=MD)).run
            return run if run.state == run_pb2.RUN_STATE_COMPLETED else None

        sent = await eventually(lambda: ended(first.run_id), what="the receipt")
        denied = await eventually(lambda: ended(denied_run.run_id), what="the promotion's run")
        assert sent.steps[0].outcome == "sent" and "consent" in denied.steps[0].outcome
        assert [(m["To"], m["Subject"]) for m in c.mail.messages] == [("eve@example.com", "Your receipt")]
        assert "Order A-42 is paid." in c.mail.messages[0].get_content()


async def test_a_delay_holds_the_run_until_its_timer_and_never_fires_early(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """A delay step waits on a durable timer; the send after it happens no earlier than the timer's wake time."""
    from google.protobuf import duration_pb2

    from overture.orchestrator.v1 import journey_pb2 as J

    async with running_cluster(make_settings, tmp_path / "mail") as c:
        await publish_tour(c)
        _, spec = example_journey()
        spec.steps.insert(0, J.Step(id="wait-a-moment", next=spec.steps[0].id, delay=J.DelayStep(duration=duration_pb2.Duration(seconds=1))))
        await c.orchestrator.PublishJourney(O.PublishJourneyRequest(name="welcome", spec=spec, reason="add a delay"), metadata=MD)
        await c.ingest.IngestEvents(I.IngestEventsRequest(events=[
            _event("identify", "fay", traits={"email": "fay@example.com"}),
            _event("consent.granted", "fay", channel="email", purpose="marketing"),
            _event("user.signed_up", "fay", "delay-signup"),
        ]), metadata=MD)

        async def waiting() -> run_pb2.Run | None:
            runs = (await c.orchestrator.ListRuns(O.ListRunsRequest(subject_id="fay"), metadata=MD)).runs
            return runs[0] if runs and runs[0].steps else None

        first_seen = await eventually(waiting, what="the run")
        assert first_seen.journey_version == 2

        async def done() -> run_pb2.Run | None:
            run = (await c.orchestrator.GetRun(O.GetRunRequest(run_id=first_seen.run_id), metadata=MD)).run
            return run if run.state == run_pb2.RUN_STATE_COMPLETED else None

        run = await eventually(done, what="the delayed send")
        delay, send = run.steps
        assert (delay.step_id, delay.outcome) == ("wait-a-moment", "delay elapsed")
        assert send.outcome == "sent" and send.start_time.ToDatetime() >= delay.start_time.ToDatetime() + dt.timedelta(seconds=1)
        assert [m["To"] for m in c.mail.messages] == ["fay@example.com"]


async def test_a_send_that_fails_for_good_gives_its_cap_slot_back_and_one_without_an_address_decides_nothing(
    make_settings: Callable[..., Settings], tmp_path: Path,
) -> None:
    """Under a cap of one email a day, a send the provider refuses for good releases its slot (the re-driven send is allowed),
    and a subject with no address is skipped before any decision is made."""
    from overture.rules.v1 import decision_pb2 as D
    from overture.rules.v1 import profile_service_pb2 as P
    from overture.rules.v1 import rule_set_pb2 as R
    from overture.rules.v1 import rules_service_pb2 as RS
    from tests.thinpath import example_rule_set

    async with running_cluster(make_settings, tmp_path / "mail") as c:
        await publish_tour(c)
        name, spec = example_rule_set()
        spec.frequency_caps.add(id="one-a-day", scope=R.CAP_SCOPE_ALL_CHANNELS, limit=1, window=R.CapWindow(kind=R.CAP_WINDOW_KIND_CALENDAR_DAY))
        created = await c.rules.CreateRuleSetVersion(RS.CreateRuleSetVersionRequest(rule_set=name, spec=spec, reason="cap"), metadata=MD)
        await c.rules.ActivateRuleSetVersion(RS.ActivateRuleSetVersionRequest(
            rule_set=name, version=created.rule_set_version.version, reason="cap"), metadata=MD)
        await c.ingest.IngestEvents(I.IngestEventsRequest(events=[
            _event("identify", "dee", traits={"email": "not-an-address"}),
            _event("consent.granted", "dee", channel="email", purpose="marketing"),
            _event("user.signed_up", "dee", "capped-signup"),
            _event("identify", "eve", traits={"first_name": "Eve"}),
            _event("consent.granted", "eve", channel="email", purpose="marketing"),
            _event("user.signed_up", "eve", "nowhere-signup"),
        ]), metadata=MD)

        async def ended(subject: str, state: run_pb2.RunState.ValueType) -> Callable[[], Any]:
            async def probe() -> run_pb2.Run | None:
                runs = (await c.orchestrator.ListRuns(O.ListRunsRequest(subject_id=subject), metadata=MD)).runs
                return runs[0] if runs and runs[0].state == state else None
            return probe

        failed = await eventually(await ended("dee", run_pb2.RUN_STATE_FAILED), what="dee's run to fail")
        (first,) = (await c.rules.ListDecisions(RS.ListDecisionsRequest(subject_id="dee"), metadata=MD)).decisions
        assert first.mode == D.EVALUATION_MODE_RESERVE_AND_COMMIT and first.reservation_state == D.RESERVATION_STATE_RELEASED
        skipped = await eventually(await ended("eve", run_pb2.RUN_STATE_COMPLETED), what="eve's run to end")
        assert skipped.steps[0].state == run_pb2.STEP_RUN_STATE_SKIPPED and "no address" in skipped.steps[0].outcome
        assert not (await c.rules.ListDecisions(RS.ListDecisionsRequest(subject_id="eve"), metadata=MD)).decisions

        request = P.UpsertProfileRequest(subject_id="dee")
        request.traits.update({"email": "dee@example.com"})
        await c.profiles.UpsertProfile(request, metadata=MD)
        await c.orchestrator.RedriveDeadLetters(O.RedriveDeadLettersRequest(run_ids=[failed.run_id], reason="address fixed"), metadata=MD)
        await eventually(await ended("dee", run_pb2.RUN_STATE_COMPLETED), what="the re-driven send")
        assert [m["To"] for m in c.mail.messages] == ["dee@example.com"]
        second, _ = (await c.rules.ListDecisions(RS.ListDecisionsRequest(subject_id="dee"), metadata=MD)).decisions
        assert second.allowed and second.reservation_state == D.RESERVATION_STATE_COMMITTED


async def test_runs_list_by_state_and_start_time(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """ListRuns keeps only runs in the state asked and started within the window; a reversed window is refused at end_time."""
    import grpc

    async with running_cluster(make_settings, tmp_path / "mail") as c:
        await publish_tour(c)
        await c.ingest.IngestEvents(I.IngestEventsRequest(events=[
            _event("identify", "lou", traits={"email": "lou@example.com"}),
            _event("consent.granted", "lou", channel="email", purpose="marketing"),
            _event("user.signed_up", "lou", "filter-signup"),
            _event("user.signed_up", "max", "filter-signup-max"),
        ]), metadata=MD)

        async def ended() -> list[run_pb2.Run] | None:
            runs = (await c.orchestrator.ListRuns(O.ListRunsRequest(journey="welcome"), metadata=MD)).runs
            return list(runs) if len(runs) == 2 and all(r.state == run_pb2.RUN_STATE_COMPLETED for r in runs) else None

        both = await eventually(ended, what="both runs to end")
        started = min(r.create_time.ToDatetime(tzinfo=dt.UTC) for r in both)
        completed = await c.orchestrator.ListRuns(O.ListRunsRequest(state=run_pb2.RUN_STATE_COMPLETED), metadata=MD)
        assert len(completed.runs) == 2
        assert not (await c.orchestrator.ListRuns(O.ListRunsRequest(state=run_pb2.RUN_STATE_FAILED), metadata=MD)).runs
        window = O.ListRunsRequest()
        window.start_time.FromDatetime(started + dt.timedelta(hours=1))
        assert not (await c.orchestrator.ListRuns(window, metadata=MD)).runs
        window.start_time.FromDatetime(started - dt.timedelta(minutes=1))
        window.end_time.FromDatetime(started + dt.timedelta(hours=1))
        assert len((await c.orchestrator.ListRuns(window, metadata=MD)).runs) == 2
        window.end_time.FromDatetime(started - dt.timedelta(hours=1))
        try:
            await c.orchestrator.ListRuns(window, metadata=MD)
            raise AssertionError("a reversed window was accepted")
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "end_time" in str(error.trailing_metadata())
