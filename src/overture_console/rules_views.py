"""Rule sets (versions, the active pointer, diffs, activate or roll back
with a reason, backtests, test cases) and the decision explorer (a
subject's decisions, each with every guardrail's verdict, the profile
fields read, and the rule-set version and digest)."""

from __future__ import annotations

import datetime as dt

from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from overture.rules.v1 import rules_service_pb2 as RS

from .render import page
from .runs_views import parse_time
from .services import ServiceError
from .web import BadInput, Visit, number, view

__all__ = ["routes"]


def _name(visit: Visit) -> str:
    name = str(visit.request.path_params["name"])
    if len(name) > 63:
        raise BadInput("no such rule set")
    return name


@view("rules.ListRuleSets")
async def rule_sets(visit: Visit) -> Response:
    """The tenant's rule sets."""
    reply = await visit.call("rules.ListRuleSets", RS.ListRuleSetsRequest(page_size=100, page_token=visit.query("page")))
    return page(visit.request, "rule_sets.html", rule_sets=reply.rule_sets, next_page=reply.next_page_token)


@view("rules.ListRuleSetVersions", "rules.GetRuleSetVersion")
async def rule_set(visit: Visit) -> Response:
    """One rule set: versions, the active one, a version's content and test cases, diff, activation and backtest forms."""
    name = _name(visit)
    versions = (await visit.call("rules.ListRuleSetVersions", RS.ListRuleSetVersionsRequest(rule_set=name, page_size=100))).rule_set_versions
    chosen = number(visit.query("version"), "version")
    notices = []
    shown = None
    try:
        shown = (await visit.call("rules.GetRuleSetVersion", RS.GetRuleSetVersionRequest(rule_set=name, version=chosen))).rule_set_version
    except ServiceError as error:
        if error.code not in ("NOT_FOUND", "FAILED_PRECONDITION") or chosen:
            raise
        notices.append(("info", "No version is active yet; choose one below."))
    backtest = None
    candidate = number(visit.query("candidate"), "candidate")
    if candidate and visit.can("rules.BacktestRuleSet"):
        request = RS.BacktestRuleSetRequest(rule_set=name, candidate_version=candidate, page_size=100)
        since = parse_time(visit.query("since"), "since")
        if since is None:
            since = parse_time((dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat(), "since")
        assert since is not None
        request.start_time.CopyFrom(since)
        until = parse_time(visit.query("until"), "until")
        if until is None:
            request.end_time.GetCurrentTime()
        else:
            request.end_time.CopyFrom(until)
        try:
            backtest = await visit.call("rules.BacktestRuleSet", request, timeout=60)
        except ServiceError as error:
            if error.http_status >= 500 and not error.unimplemented:
                raise
            notices.append(("error", error.notice + "".join(f" {f}: {d}." for f, d in error.violations)))
    return page(visit.request, "rule_set.html", name=name, versions=versions, shown=shown, backtest=backtest, candidate=candidate,
                since=visit.query("since"), until=visit.query("until"), notices=notices)


@view("rules.DiffRuleSetVersions")
async def rule_set_diff(visit: Visit) -> Response:
    """The changes between two versions."""
    name = _name(visit)
    old, new = number(visit.query("from"), "from", low=1), number(visit.query("to"), "to", low=1)
    reply = await visit.call("rules.DiffRuleSetVersions", RS.DiffRuleSetVersionsRequest(rule_set=name, from_version=old, to_version=new))
    return page(visit.request, "rule_set_diff.html", name=name, old=old, new=new, changes=reply.changes)


@view("rules.ActivateRuleSetVersion")
async def activate(visit: Visit) -> Response:
    """Activate a version (an older one: a rollback), with a reason."""
    name = _name(visit)
    version = number(visit.field("version"), "version", low=1)
    try:
        reply = await visit.call("rules.ActivateRuleSetVersion", RS.ActivateRuleSetVersionRequest(
            rule_set=name, version=version, reason=visit.field("reason"), request_id=visit.field("request_id")[:64]))
        previous = reply.previous_version
        word = "rolled back to" if previous and version < previous else "activated"
        visit.notice(f"{name}: {word} version {version} (was {previous or 'none'}).")
    except ServiceError as error:
        if error.http_status >= 500 and not error.unimplemented:
            raise
        visit.notice(error.notice + "".join(f" {f}: {d}." for f, d in error.violations), "error")
    return RedirectResponse(f"/rule-sets/{name}", status_code=303)


@view("rules.ListDecisions")
async def decisions(visit: Visit) -> Response:
    """A subject's decisions, newest first, each with its verdicts."""
    subject = visit.query("subject").strip()
    found, token = [], ""
    if subject:
        reply = await visit.call("rules.ListDecisions", RS.ListDecisionsRequest(subject_id=subject, page_size=25, page_token=visit.query("page")))
        found, token = list(reply.decisions), reply.next_page_token
    return page(visit.request, "decisions.html", subject=subject, decisions=found, next_page=token)


@view("rules.GetDecision")
async def decision(visit: Visit) -> Response:
    """One decision record."""
    decision_id = str(visit.request.path_params["decision_id"])
    if len(decision_id) > 256:
        raise BadInput("no such decision")
    found = (await visit.call("rules.GetDecision", RS.GetDecisionRequest(decision_id=decision_id))).decision
    return page(visit.request, "decision.html", d=found)


routes = [
    Route("/rule-sets", rule_sets, methods=["GET"]),
    Route("/rule-sets/{name}", rule_set, methods=["GET"]),
    Route("/rule-sets/{name}/diff", rule_set_diff, methods=["GET"]),
    Route("/rule-sets/{name}/activate", activate, methods=["POST"]),
    Route("/decisions", decisions, methods=["GET"]),
    Route("/decisions/{decision_id}", decision, methods=["GET"]),
]
