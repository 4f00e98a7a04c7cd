"""Analytics, as charts: runs and sends per day, send success rate, step
latency (p50, p95, p99), sends per channel, denials by guardrail, and
holdout against treatment conversion.

Where the figures come from (no RPC offers a time series yet):

- counters (``GetJourneyStats``): runs and sends per day (its daily
  counters), success rate, step latency, holdout and treatment conversion,
  and sends per channel (each send step's completed count, by the channel
  its definition names): exact;
- the latest runs (``ListRuns``, newest first, at most :data:`RUN_SAMPLE`
  runs of the last :data:`DAYS` days) and the decisions behind their denied
  sends (``GetDecision``, at most :data:`DECISION_SAMPLE`): denials by
  guardrail, a sample.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from typing import Any

from starlette.responses import Response
from starlette.routing import Route

from overture.common.v1 import messaging_pb2
from overture.orchestrator.v1 import orchestrator_service_pb2 as OS
from overture.orchestrator.v1 import run_pb2
from overture.rules.v1 import decision_pb2
from overture.rules.v1 import rules_service_pb2 as RS

from .charts import bar_chart
from .render import page
from .services import ServiceError
from .web import Visit, view

__all__ = ["DAYS", "DECISION_SAMPLE", "RUN_SAMPLE", "routes"]

DAYS = 14
RUN_SAMPLE = 2000
DECISION_SAMPLE = 100
_DENYING = (decision_pb2.VERDICT_OUTCOME_DENY, decision_pb2.VERDICT_OUTCOME_ERROR)


async def _recent_runs(visit: Visit, journey: str, since: dt.datetime) -> tuple[list[Any], bool]:
    """Runs started since *since*, newest first, and whether the sample stopped before the window's start."""
    found: list[Any] = []
    token = ""
    request = OS.ListRunsRequest(journey=journey, page_size=100)
    request.start_time.FromDatetime(since)
    while len(found) < RUN_SAMPLE:
        request.page_token = token
        reply = await visit.call("orchestrator.ListRuns", request)
        fresh = [r for r in reply.runs if r.create_time.ToDatetime(tzinfo=dt.UTC) >= since]
        found += fresh
        token = reply.next_page_token
        if not token or len(fresh) < len(reply.runs):
            return found, False
    return found, True


@view("orchestrator.ListJourneys", "orchestrator.GetJourneyStats", "orchestrator.ListRuns")
async def analytics(visit: Visit) -> Response:
    """The charts, for every journey or one."""
    chosen = visit.query("journey").strip()
    listed = (await visit.call("orchestrator.ListJourneys", OS.ListJourneysRequest(page_size=100))).journeys
    journeys = [j for j in listed if not chosen or j.name == chosen]
    stats = await asyncio.gather(*(visit.call("orchestrator.GetJourneyStats", OS.GetJourneyStatsRequest(name=j.name)) for j in journeys))
    by_name = {j.name: (j, s.stats) for j, s in zip(journeys, stats, strict=True)}
    now = dt.datetime.now(dt.UTC)
    since = (now - dt.timedelta(days=DAYS - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    runs, sampled = await _recent_runs(visit, chosen, since)
    days = [str((since + dt.timedelta(days=i)).date()) for i in range(DAYS)]
    runs_per_day: Counter[str] = Counter()
    sends_per_day: Counter[str] = Counter()
    for _, counters in by_name.values():
        for day in counters.days:
            runs_per_day[day.date] += day.entered
            sends_per_day[day.date] += day.sent
    charts = [bar_chart("per-day", f"Runs and sends per day, last {DAYS} days", [d[5:] for d in days],
                        {"runs": [runs_per_day[d] for d in days], "sends": [sends_per_day[d] for d in days]})]
    with_sends = [(n, s) for n, (_, s) in by_name.items() if s.entered]
    charts.append(bar_chart("success", "Send success rate", [n for n, _ in with_sends], {"delivered": [s.send_success_rate * 100 for _, s in with_sends]},
                            fmt=lambda v: f"{v:.0f}%", ceiling=100))
    focus = chosen or next((n for n, s in with_sends), "")
    if focus:
        steps = [s for s in by_name[focus][1].steps if s.entered]
        ms = [{"p50": s.latency_p50, "p95": s.latency_p95, "p99": s.latency_p99} for s in steps]
        charts.append(bar_chart("latency", f"Step latency of {focus} (p50, p95, p99)", [s.step_id for s in steps],
                                {p: [m[p].ToTimedelta().total_seconds() for m in ms] for p in ("p50", "p95", "p99")},
                                fmt=lambda v: f"{v:.2f} s" if v < 120 else f"{v / 3600:.1f} h"))
    channels: Counter[str] = Counter()
    for journey, counters in by_name.values():
        done = {s.step_id: s.completed for s in counters.steps}
        for step in journey.spec.steps:
            if step.HasField("send"):
                channels[messaging_pb2.Channel.Name(step.send.channel).removeprefix("CHANNEL_").lower()] += done.get(step.id, 0)
    charts.append(bar_chart("channels", "Sends per channel", list(channels), {"sends": list(channels.values())},
                            note="Sends of the current versions' send steps, by the channel each names."))
    denied = [s.decision_id for r in runs for s in r.steps if s.state == run_pb2.STEP_RUN_STATE_SKIPPED and s.decision_id][:DECISION_SAMPLE]
    guardrails: Counter[str] = Counter()
    if denied and visit.can("rules.GetDecision"):
        found = await asyncio.gather(*(visit.call("rules.GetDecision", RS.GetDecisionRequest(decision_id=d)) for d in denied),
                                     return_exceptions=True)
        for reply in found:
            if isinstance(reply, ServiceError):
                continue
            if isinstance(reply, BaseException):
                raise reply
            for verdict in reply.decision.verdicts:
                if verdict.outcome in _DENYING:
                    kind = decision_pb2.VerdictKind.Name(verdict.kind).removeprefix("VERDICT_KIND_").lower()
                    guardrails[f"{kind} {verdict.id}".strip()] += 1
    charts.append(bar_chart("denials", "Denied sends by guardrail", list(guardrails), {"denials": list(guardrails.values())},
                            note=(f"From the decisions of the latest {len(denied)} denied sends"
                                  f"{f' among the latest {RUN_SAMPLE:,} runs' if sampled else ''}." if denied else "")))
    arms = [(n, a) for n, (_, s) in by_name.items() for a in s.arms if a.entered]
    charts.append(bar_chart("holdout", "Conversion: holdout against treatment", [f"{n} · {a.arm}{' (holdout)' if a.holdout else ''}" for n, a in arms],
                            {"converted": [100 * a.converted / a.entered for _, a in arms]}, fmt=lambda v: f"{v:.1f}%", ceiling=100))
    return page(visit.request, "analytics.html", charts=charts, journeys=listed, chosen=chosen)


routes = [Route("/analytics", analytics, methods=["GET"])]
