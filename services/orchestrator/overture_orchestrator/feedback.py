"""Delivery feedback: statuses reported by connectors (delivered, bounced,
opened, clicked, complained) update the run's step, suppress addresses
that hard-bounce or complain, and come back into Overture as events such as
``email.bounced``, carrying their causation so that journeys reacting to
them cannot loop forever."""

from __future__ import annotations

import datetime as dt

import grpc
import structlog
from google.protobuf import timestamp_pb2

from overture.common.v1 import event_pb2, messaging_pb2
from overture.ingest.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from overture.rules.v1 import profile_service_pb2, profile_service_pb2_grpc
from overture_runtime.clients import call_metadata
from overture_runtime.config import Settings
from overture_runtime.errors import FailedPrecondition, NotFound, Unavailable

from .contexts import effect_step
from .journeys import JourneyStore
from .runs import RunStore
from .sends import s_channel

__all__ = ["SUPPRESS_ON", "DeliveryFeedback"]

log = structlog.get_logger("overture.orchestrator")
SUPPRESS_ON = {messaging_pb2.DELIVERY_STATUS_BOUNCED: "hard-bounces", messaging_pb2.DELIVERY_STATUS_COMPLAINED: "complaints"}
"""Statuses that put the subject on a suppression list, and which."""


class DeliveryFeedback:
    """Handles ReportDeliveryStatus."""

    def __init__(
        self, *, runs: RunStore, journeys: JourneyStore, settings: Settings,
        ingest: ingest_service_pb2_grpc.IngestServiceStub, profiles: profile_service_pb2_grpc.ProfileServiceStub,
    ) -> None:
        self._runs = runs
        self._journeys = journeys
        self._settings = settings
        self._ingest = ingest
        self._profiles = profiles

    async def report(
        self, tenant: str, *, idempotency_key: str, delivery_id: str, status: messaging_pb2.DeliveryStatus.ValueType,
        detail: str, occur_time: dt.datetime | None, soft_bounce: bool = False,
    ) -> None:
        """Apply one reported status. Idempotent: the same report twice emits one event.
        A soft bounce suppresses nothing, and its event is distinct from a later hard bounce's."""
        run_id, step_id = effect_step(idempotency_key)
        run = await self._runs.get(tenant, run_id)
        if not any(s.step_id == step_id for s in run.steps):
            raise NotFound(f"run {run_id!r} has no step {step_id!r}", reason="STEP_NOT_FOUND")
        channel, to_subject = await self._channel(tenant, run.journey, run.journey_version, step_id)
        name = messaging_pb2.DeliveryStatus.Name(status).removeprefix("DELIVERY_STATUS_").lower()
        if not await self._runs.note_delivery(tenant, run_id, step_id, f"delivery {name}" + (f": {detail[:200]}" if detail else ""),
                                              delivery_id=delivery_id):
            raise FailedPrecondition("delivery_id does not match the step's delivery", reason="DELIVERY_MISMATCH")
        metadata = call_metadata(self._settings, tenant)
        timeout = self._settings.rpc_timeout_seconds
        try:
            # A notification or a call went to a team or a system, not to the
            # subject: its bounce says nothing about the subject's address.
            suppression = None if soft_bounce or not to_subject else SUPPRESS_ON.get(status)
            if suppression:
                await self._profiles.UpsertProfile(profile_service_pb2.UpsertProfileRequest(
                    subject_id=run.subject_id, add_suppression_lists=[suppression]), metadata=metadata, timeout=timeout)
            trigger = await self._trigger_causation(tenant, run.trigger_event_id)
            event = event_pb2.Event(
                event_id=f"delivery:{delivery_id or idempotency_key}:{name}{'-soft' if soft_bounce else ''}", event_type=f"{channel}.{name}",
                subject_id=run.subject_id,
                source="overture.orchestrator",
                causation=event_pb2.Causation(root_event_id=trigger[0] or run.trigger_event_id, run_id=run_id, depth=trigger[1] + 1),
            )
            event.attributes.update({"run_id": run_id, "journey": run.journey, "step_id": step_id, "delivery_id": delivery_id,
                                     "status": name, "detail": detail[:500]})
            if status == messaging_pb2.DELIVERY_STATUS_BOUNCED:
                event.attributes["bounce"] = "soft" if soft_bounce else "hard"
            if occur_time is not None:
                event.occurred_at.CopyFrom(_timestamp(occur_time))
            await self._ingest.IngestEvents(ingest_service_pb2.IngestEventsRequest(events=[event]), metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            raise Unavailable(f"could not record the delivery status: {error.code().name}", reason="DOWNSTREAM_UNAVAILABLE",
                              retry_after=dt.timedelta(seconds=1)) from None
        log.info("delivery.reported", run_id=run_id, step_id=step_id, status=name)

    async def _channel(self, tenant: str, journey: str, version: int, step_id: str) -> tuple[str, bool]:
        """The step's channel (the events' prefix) and whether it delivers to the run's subject."""
        if not journey:
            return "message", True
        compiled = await self._journeys.compiled(tenant, journey, version)
        step = compiled.steps.get(step_id)
        kind = step.WhichOneof("kind") if step is not None else None
        if step is None or kind not in ("send", "notify", "webhook"):
            raise FailedPrecondition(f"step {step_id!r} delivers nothing", reason="NOT_A_SEND_STEP")
        return messaging_pb2.Channel.Name(s_channel(step)).removeprefix("CHANNEL_").lower(), kind == "send"

    async def _trigger_causation(self, tenant: str, event_id: str) -> tuple[str, int]:
        """The causation root and depth of the event that started the run."""
        event = await self._runs.trigger_event(tenant, event_id)
        if event is None or not event.causation.root_event_id:
            return event_id, 0
        return event.causation.root_event_id, event.causation.depth


def _timestamp(when: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp
