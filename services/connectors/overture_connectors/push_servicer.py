"""The PushService servicer: validation and translation (:mod:`.push_store`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import grpc

from overture.connectors.v1 import push_pb2, push_service_pb2, push_service_pb2_grpc
from overture_runtime import Violations, current_principal
from overture_runtime.clock import Clock
from overture_runtime.errors import FailedPrecondition
from overture_runtime.validation import check_identifier, decode_page_token, encode_page_token, page_size

from .push_store import NewSubscription, PushSubscriptions, subscription_id
from .web_push import DEFAULT_ENDPOINT_HOSTS, endpoint_problem, keys_problem

__all__ = ["PushConfig", "PushServicer", "to_proto"]

PS = push_service_pb2
_USER_AGENT_MAX = 200


@dataclass(frozen=True)
class PushConfig:
    """The push channel's public configuration: the default web_push provider's."""

    application_server_key: str
    """The VAPID public key browsers subscribe with."""
    endpoint_hosts: tuple[str, ...]
    """Where subscriptions' endpoints may be."""


class PushServicer(push_service_pb2_grpc.PushServiceServicer):
    """Serves ``overture.connectors.v1.PushService``. Without a web_push provider, subscriptions are
    checked against the well-known push services and ``GetPushConfig`` is FAILED_PRECONDITION."""

    def __init__(self, *, subscriptions: PushSubscriptions, config: PushConfig | None, clock: Clock) -> None:
        self._subscriptions, self._config, self._clock = subscriptions, config, clock
        self._hosts = config.endpoint_hosts if config else DEFAULT_ENDPOINT_HOSTS

    async def CreatePushSubscription(self, request: PS.CreatePushSubscriptionRequest,
                                     context: grpc.aio.ServicerContext) -> PS.CreatePushSubscriptionResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_identifier(v, "subject_id", request.subject_id)
        check_identifier(v, "request_id", request.request_id, required=False)
        sub = request.subscription
        if not request.HasField("subscription"):
            v.add("subscription", "subscription is required", "REQUIRED")
        elif not sub.endpoint:
            v.add("subscription.endpoint", "endpoint is required", "REQUIRED")
        elif (problem := endpoint_problem(sub.endpoint, self._hosts)) is not None:
            v.add("subscription.endpoint", problem, "INVALID_ENDPOINT")
        if request.HasField("subscription"):
            bad_keys = keys_problem(sub.keys.p256dh, sub.keys.auth)
            if bad_keys is not None:
                v.add(f"subscription.keys.{bad_keys[0]}", bad_keys[1], "INVALID_KEY")
            if len(sub.user_agent) > _USER_AGENT_MAX or not sub.user_agent.isprintable():
                v.add("subscription.user_agent", f"user_agent must be at most {_USER_AGENT_MAX} printable characters", "INVALID")
        v.raise_if_any("the subscription is invalid")
        expires = sub.expire_time.ToDatetime(tzinfo=dt.UTC) if sub.HasField("expire_time") else None
        row = await self._subscriptions.store(tenant, request.subject_id, NewSubscription(
            endpoint=sub.endpoint, p256dh=sub.keys.p256dh, auth=sub.keys.auth, user_agent=sub.user_agent, expire_time=expires),
            now=self._clock.now())
        return PS.CreatePushSubscriptionResponse(subscription=to_proto(row))

    async def ListPushSubscriptions(self, request: PS.ListPushSubscriptionsRequest,
                                    context: grpc.aio.ServicerContext) -> PS.ListPushSubscriptionsResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_identifier(v, "subject_id", request.subject_id)
        size = page_size(v, request.page_size)
        v.raise_if_any()
        after = str(decode_page_token(request.page_token, after=str).get("after", ""))
        rows = await self._subscriptions.page(tenant, request.subject_id, limit=size + 1, after=after)
        token = encode_page_token({"after": rows[size - 1].subscription_id}) if len(rows) > size else ""
        return PS.ListPushSubscriptionsResponse(subscriptions=[to_proto(r) for r in rows[:size]], next_page_token=token)

    async def DeletePushSubscription(self, request: PS.DeletePushSubscriptionRequest,
                                     context: grpc.aio.ServicerContext) -> PS.DeletePushSubscriptionResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_identifier(v, "subject_id", request.subject_id)
        check_identifier(v, "request_id", request.request_id, required=False)
        check_identifier(v, "subscription_id", request.subscription_id, required=False)
        if bool(request.subscription_id) == bool(request.endpoint):
            v.add("subscription_id", "give either subscription_id or endpoint", "ONE_OF")
        elif len(request.endpoint) > 2048:
            v.add("endpoint", "endpoint must be at most 2048 characters", "TOO_LONG")
        v.raise_if_any()
        sub_id = request.subscription_id or subscription_id(request.endpoint)
        return PS.DeletePushSubscriptionResponse(deleted=await self._subscriptions.delete(tenant, request.subject_id, sub_id))

    async def GetPushConfig(self, request: PS.GetPushConfigRequest, context: grpc.aio.ServicerContext) -> PS.GetPushConfigResponse:
        current_principal()
        if self._config is None:
            raise FailedPrecondition("no web_push provider is configured (OVERTURE_CONNECTOR_PROVIDERS)", reason="NO_PUSH_PROVIDER")
        return PS.GetPushConfigResponse(application_server_key=self._config.application_server_key,
                                        endpoint_hosts=list(self._config.endpoint_hosts))


def to_proto(row: Any) -> push_pb2.PushSubscription:
    """A stored subscription as its proto, without its keys."""
    sub = push_pb2.PushSubscription(subscription_id=row.subscription_id, subject_id=row.subject_id, endpoint=row.endpoint,
                                    user_agent=row.user_agent)
    sub.create_time.FromDatetime(row.create_time)
    sub.update_time.FromDatetime(row.update_time)
    if row.expire_time is not None:
        sub.expire_time.FromDatetime(row.expire_time)
    if row.last_send_time is not None:
        sub.last_send_time.FromDatetime(row.last_send_time)
    return sub
