"""A stand-in for the four services: one in-process gRPC server on loopback
that answers each method with a canned response (or a canned error) and
records the requests, so the CLI's commands can be run end to end without
the services."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import any_pb2, descriptor_pool, duration_pb2, message_factory
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from overture.common.v1 import event_pb2, messaging_pb2
from overture.connectors.v1 import connector_service_pb2 as CS
from overture.connectors.v1 import delivery_pb2
from overture.ingest.v1 import ingest_service_pb2 as IS
from overture.ingest.v1 import ingested_event_pb2
from overture.orchestrator.v1 import journey_pb2 as J
from overture.orchestrator.v1 import orchestrator_service_pb2 as OS
from overture.orchestrator.v1 import run_pb2
from overture.rules.v1 import decision_pb2, profile_pb2, rule_set_pb2
from overture.rules.v1 import profile_service_pb2 as PS
from overture.rules.v1 import rules_service_pb2 as R

Answer = Message | Callable[[Message], Message] | status_pb2.Status

NOW = dt.datetime(2026, 11, 20, 9, 30, tzinfo=dt.UTC)


def _ts(when: dt.datetime = NOW) -> Any:
    from google.protobuf import timestamp_pb2

    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def bad_request(message: str, *violations: tuple[str, str]) -> status_pb2.Status:
    """An INVALID_ARGUMENT status with BadRequest field violations, as the services send it."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations
    ]))
    return status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message, details=[detail])


def not_found(message: str) -> status_pb2.Status:
    """A NOT_FOUND status."""
    return status_pb2.Status(code=code_pb2.NOT_FOUND, message=message)


def _run(run_id: str, subject: str, state: int, outcome: str, decision: str) -> run_pb2.Run:
    return run_pb2.Run(
        run_id=run_id, journey="welcome", journey_version=1, subject_id=subject, trigger_event_id=f"signup-{subject}",
        state=run_pb2.RUN_STATE_COMPLETED, create_time=_ts(), update_time=_ts(),
        steps=[run_pb2.StepRun(step_id="send-welcome", state=state, attempts=1, decision_id=decision, outcome=outcome, start_time=_ts())],
    )


def _decision() -> decision_pb2.Decision:
    D = decision_pb2
    d = D.Decision(
        decision_id="dec-bob", rule_set="marketing-email", version=1, digest="07a77e9e834241cc222a", subject_id="bob",
        channel=messaging_pb2.CHANNEL_EMAIL, mode=D.EVALUATION_MODE_RESERVE, allowed=False, evaluate_time=_ts(),
        summary="denied by consent: consent email/marketing not granted",
        verdicts=[
            D.Verdict(kind=D.VERDICT_KIND_CONSENT, id="email/marketing", outcome=D.VERDICT_OUTCOME_DENY, reason="consent email/marketing not granted"),
            D.Verdict(kind=D.VERDICT_KIND_RULE, id="not-churned", outcome=D.VERDICT_OUTCOME_PASS, reason="not-churned: passed"),
        ],
    )
    d.profile_snapshot.update({"traits": {"plan": "pro"}, "consents": {"email/marketing": "missing"}, "erased": False})
    return d


def _draft() -> OS.JourneyDraft:
    from overture.common.v1 import field_violation_pb2

    draft = OS.JourneyDraft(name="welcome", spec=_journey().spec, author="dev", update_time=_ts())
    draft.problems.add(field="spec.steps[0].send.template", reason="UNKNOWN_TEMPLATE", description="no template named 'welcom' in templates")
    draft.warnings.append(field_violation_pb2.FieldViolation(field="spec.rule_set", reason="NOT_CHECKED",
                                                             description="not checked: the rules service could not be reached"))
    return draft


def _journey(version: int = 1, state: J.JourneyState.ValueType = J.JOURNEY_STATE_ACTIVE) -> J.Journey:
    spec = J.JourneySpec(
        description="Welcome new sign-ups.", rule_set="marketing-email",
        trigger=J.JourneyTrigger(event=J.EventTrigger(event_type="user.signed_up")),
        steps=[J.Step(id="send-welcome", send=J.SendStep(channel=messaging_pb2.CHANNEL_EMAIL, template="welcome"))],
    )
    spec.templates["welcome"].subject = "Welcome, {{ profile.traits.first_name }}!"
    spec.templates["welcome"].text_body = "Hi,\n\nThanks for signing up."
    return J.Journey(name="welcome", version=version, digest=f"{version}b02a9dcaad1ffff", state=state, spec=spec, author="dev",
                     reason="published from the CLI", create_time=_ts())


def _version(version: int, *, active: bool) -> rule_set_pb2.RuleSetVersion:
    return rule_set_pb2.RuleSetVersion(rule_set="marketing-email", version=version, digest=f"{version}" * 16, author="dev",
                                       create_time=_ts(), reason="published from the CLI", active=active)


def _event() -> ingested_event_pb2.IngestedEvent:
    event = event_pb2.Event(event_id="signup-alice", event_type="user.signed_up", subject_id="alice", occurred_at=_ts(), source="cli",
                            received_at=_ts())
    event.attributes.update({"plan": "pro", "referrer": {"campaign": "launch"}})
    return ingested_event_pb2.IngestedEvent(event=event, state=ingested_event_pb2.INGESTED_EVENT_STATE_PUBLISHED, commit_time=_ts(),
                                            publish_time=_ts(), partition=5, run_ids=["run-alice"])


def _profile() -> profile_pb2.Profile:
    profile = profile_pb2.Profile(subject_id="alice", timezone="Europe/Paris", segments=["trial"], update_time=_ts(), consents=[
        profile_pb2.Consent(channel=messaging_pb2.CHANNEL_EMAIL, purpose="marketing", status=profile_pb2.CONSENT_STATUS_GRANTED, source="cli",
                            update_time=_ts()),
    ])
    profile.traits.update({"first_name": "Alice", "plan": "pro"})
    return profile


def _preview() -> OS.PreviewJourneyResponse:
    """The welcome journey previewed for alice: one send, allowed."""
    step = run_pb2.StepRun(step_id="send-welcome", state=run_pb2.STEP_RUN_STATE_COMPLETED, edge="next", start_time=_ts(),
                           outcome="would send template 'welcome' by email")
    message = OS.PreviewedMessage(step_id="send-welcome", channel=messaging_pb2.CHANNEL_EMAIL, to="a***@e***.com",
                                  subject="Welcome to Overture, Alice!", text_body="Thanks for signing up.",
                                  decision=decision_pb2.Decision(allowed=True, summary="allowed"))
    return OS.PreviewJourneyResponse(steps=[step], messages=[message], entered=True)


def _backtest() -> OS.JourneyBacktest:
    """A finished backtest of the welcome journey: a candidate that sends fewer emails than version 1."""
    return OS.JourneyBacktest(
        backtest_id="bt-1", name="welcome", state=OS.BACKTEST_STATE_SUCCEEDED, events_scanned=1200, events_total=1200,
        create_time=_ts(), end_time=_ts(),
        candidate=OS.BacktestReport(version=0, runs_entered=300, subjects_entered=280, sends_by_channel={"email": 250},
                                    denials_by_guardrail={"consent": 50}, edge_counts={"send-welcome:next": 300}),
        baseline=OS.BacktestReport(version=1, runs_entered=300, subjects_entered=280, sends_by_channel={"email": 270},
                                   denials_by_guardrail={"consent": 30}, edge_counts={"send-welcome:next": 300}))


def canned() -> dict[str, Answer]:
    """A realistic answer for every method the CLI calls, after the tour of the README."""
    alice = _run("run-alice", "alice", run_pb2.STEP_RUN_STATE_COMPLETED, "sent", "dec-alice")
    bob = _run("run-bob", "bob", run_pb2.STEP_RUN_STATE_SKIPPED, "denied by consent", "dec-bob")
    failed = _run("run-carol", "carol", run_pb2.STEP_RUN_STATE_FAILED, "", "")
    failed.state = run_pb2.RUN_STATE_FAILED
    failed.steps[0].error = "SMTP relay refused the connection"
    return {
        "IngestEvents": IS.IngestEventsResponse(results=[IS.EventResult(index=0, event_id="signup-alice", status=IS.EVENT_RESULT_STATUS_ACCEPTED)]),
        "GetEvent": IS.GetEventResponse(event=_event()),
        "CreateRuleSetVersion": R.CreateRuleSetVersionResponse(rule_set_version=_version(2, active=False)),
        "ActivateRuleSetVersion": R.ActivateRuleSetVersionResponse(rule_set_version=_version(2, active=True), previous_version=1),
        "ListRuleSetVersions": R.ListRuleSetVersionsResponse(rule_set_versions=[_version(2, active=True), _version(1, active=False)]),
        "DiffRuleSetVersions": R.DiffRuleSetVersionsResponse(changes=[
            rule_set_pb2.RuleSetChange(path="rules[id=not-churned].expression", kind=rule_set_pb2.RULE_SET_CHANGE_KIND_CHANGED,
                                       before='"plan == \\"churned\\""', after='"plan in [\\"churned\\", \\"cancelled\\"]"'),
        ]),
        "BacktestRuleSet": R.BacktestRuleSetResponse(evaluated_count=2, changed_count=1, newly_denied_count=1, changes=[
            R.BacktestChange(decision_id="dec-alice", subject_id="alice", allowed_before=True, allowed_after=False, verdicts_after=[
                decision_pb2.Verdict(kind=decision_pb2.VERDICT_KIND_RULE, id="not-churned", outcome=decision_pb2.VERDICT_OUTCOME_DENY,
                                     reason="churned and cancelled customers get no marketing email"),
            ]),
        ]),
        "ListAuditEvents": R.ListAuditEventsResponse(audit_events=[]),
        "GetDecision": R.GetDecisionResponse(decision=_decision()),
        "ListDecisions": R.ListDecisionsResponse(decisions=[_decision()]),
        "GetProfile": PS.GetProfileResponse(profile=_profile()),
        "PublishJourney": OS.PublishJourneyResponse(journey=_journey()),
        "GetJourney": OS.GetJourneyResponse(journey=_journey()),
        "PauseJourney": OS.PauseJourneyResponse(journey=J.Journey(name="welcome", version=1, state=J.JOURNEY_STATE_PAUSED)),
        "ResumeJourney": OS.ResumeJourneyResponse(journey=J.Journey(name="welcome", version=1, state=J.JOURNEY_STATE_ACTIVE)),
        "ListRuns": OS.ListRunsResponse(runs=[bob, alice]),
        "GetRun": OS.GetRunResponse(run=alice),
        "ListDeadLetters": OS.ListDeadLettersResponse(runs=[failed]),
        "RedriveDeadLetters": OS.RedriveDeadLettersResponse(redriven_count=1),
        "ListApprovals": OS.ListApprovalsResponse(approvals=[OS.Approval(
            run_id="run-erin", step_id="vip-gate", journey="vip-offer", journey_version=2, subject_id="erin", approver_role="marketing.lead",
            message="Offer Erin the VIP upgrade?", request_time=_ts(), expire_time=_ts())]),
        "DecideApproval": OS.DecideApprovalResponse(run=alice),
        "GetJourneyStats": OS.GetJourneyStatsResponse(stats=OS.JourneyStats(
            name="welcome", entered=120, active=3, completed=110, converted=40, failed=2, dead_lettered=1, send_success_rate=0.98,
            steps=[OS.StepStats(step_id="send-welcome", entered=120, completed=115, skipped=3, failed=2, edges={"next": 115},
                                latency_p50=duration_pb2.Duration(nanos=50_000_000), latency_p95=duration_pb2.Duration(nanos=100_000_000),
                                latency_p99=duration_pb2.Duration(seconds=1))],
            arms=[OS.ArmStats(step_id="ab", arm="control", holdout=True, entered=20, converted=4)])),
        "PreviewJourney": _preview(),
        "ReplayEvents": OS.ReplayEventsResponse(events_read=120, runs_started=7),
        "StartJourneyBacktest": OS.StartJourneyBacktestResponse(backtest=OS.JourneyBacktest(
            backtest_id="bt-1", name="welcome", state=OS.BACKTEST_STATE_RUNNING, create_time=_ts())),
        "GetJourneyBacktest": OS.GetJourneyBacktestResponse(backtest=_backtest()),
        "ListStepTypes": OS.ListStepTypesResponse(steps=[OS.StepType(
            kind="wait_for_event", title="Wait for event", category="wait", edges=["event", "timeout"],
            fields=[OS.StepField(name="event_type", type="string", required=True)])]),
        "ListJourneyVersions": OS.ListJourneyVersionsResponse(journeys=[_journey(2, J.JOURNEY_STATE_ACTIVE), _journey(1, J.JOURNEY_STATE_SUPERSEDED)]),
        "SaveJourneyDraft": OS.SaveJourneyDraftResponse(draft=_draft()),
        "GetJourneyDraft": OS.GetJourneyDraftResponse(draft=_draft()),
        "ArchiveJourney": OS.ArchiveJourneyResponse(journey=J.Journey(name="welcome", version=2, state=J.JOURNEY_STATE_ARCHIVED),
                                                    cancelled_runs=3),
        "MigrateRuns": OS.MigrateRunsResponse(migrated_count=2, to_version=2, rejections=[OS.RedriveRejection(
            run_id="run-carol", reason="STEP_NOT_IN_VERSION",
            description="run 'run-carol' is at step 'wait-more', and version 2 has no step 'wait-more'")]),
        "ListDeliveries": CS.ListDeliveriesResponse(deliveries=[_delivery(messaging_pb2.DELIVERY_STATUS_IN_DOUBT)]),
        "ResolveDelivery": CS.ResolveDeliveryResponse(delivery=_delivery(messaging_pb2.DELIVERY_STATUS_SENT)),
    }


def _delivery(status: messaging_pb2.DeliveryStatus.ValueType) -> delivery_pb2.Delivery:
    return delivery_pb2.Delivery(
        delivery_id="dlv-dave", idempotency_key="run-dave:send-welcome", connector="smtp", channel=messaging_pb2.CHANNEL_EMAIL,
        status=status, attempts=1, create_time=_ts(), update_time=_ts(), subject_id="dave",
        last_error="smtp: connection lost after the message was sent" if status == messaging_pb2.DELIVERY_STATUS_IN_DOUBT
        else "resolved as sent by an operator",
    )


class FakeServices(grpc.GenericRpcHandler):
    """Answers every method of every Overture service from :attr:`answers` (by method name); records each request."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = canned()
        self.requests: dict[str, list[Message]] = {}
        self.metadata: list[dict[str, str]] = []
        self._pool = descriptor_pool.Default()

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        service_name, _, method_name = handler_call_details.method.strip("/").partition("/")
        try:
            method = self._pool.FindServiceByName(service_name).methods_by_name[method_name]
        except KeyError:
            return None
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)

        async def behave(request: Message, context: grpc.aio.ServicerContext) -> Message:
            self.requests.setdefault(method_name, []).append(request)
            self.metadata.append(dict(context.invocation_metadata() or ()))
            answer = self.answers.get(method_name, status_pb2.Status(code=code_pb2.UNIMPLEMENTED, message=f"{method_name} is not faked"))
            if isinstance(answer, status_pb2.Status):
                s = rpc_status.to_status(answer)
                await context.abort(s.code, s.details, s.trailing_metadata)
            if callable(answer):
                return answer(request)
            assert isinstance(answer, response_type)
            return answer

        return grpc.unary_unary_rpc_method_handler(behave, request_deserializer=request_type.FromString,
                                                   response_serializer=response_type.SerializeToString)
