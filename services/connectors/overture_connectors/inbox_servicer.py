"""The InboxService servicer: validation and translation (:mod:`.inbox`)."""

from __future__ import annotations

import datetime as dt

import grpc

from overture.connectors.v1 import inbox_service_pb2, inbox_service_pb2_grpc
from overture_runtime import Violations, current_principal
from overture_runtime.clock import Clock
from overture_runtime.errors import FailedPrecondition
from overture_runtime.links import Links
from overture_runtime.validation import check_identifier, decode_page_token, encode_page_token, page_size

from .inbox import Inbox, to_proto

__all__ = ["InboxServicer"]

IS = inbox_service_pb2
_MAX_IDS = 100
_TTL_DEFAULT, _TTL_MIN, _TTL_MAX = dt.timedelta(hours=1), dt.timedelta(minutes=1), dt.timedelta(days=1)


class InboxServicer(inbox_service_pb2_grpc.InboxServiceServicer):
    """Serves ``overture.connectors.v1.InboxService``."""

    def __init__(self, *, inbox: Inbox, links: Links, clock: Clock) -> None:
        self._inbox, self._links, self._clock = inbox, links, clock

    async def ListInboxMessages(self, request: IS.ListInboxMessagesRequest, context: grpc.aio.ServicerContext) -> IS.ListInboxMessagesResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_identifier(v, "subject_id", request.subject_id)
        check_identifier(v, "after_message_id", request.after_message_id, required=False)
        size = page_size(v, request.page_size)
        v.raise_if_any()
        before = str(decode_page_token(request.page_token, before=str).get("before", ""))
        rows = await self._inbox.list(tenant, request.subject_id, limit=size + 1, before=before, after=request.after_message_id)
        token = encode_page_token({"before": rows[size - 1].message_id}) if len(rows) > size else ""
        return IS.ListInboxMessagesResponse(messages=[to_proto(r) for r in rows[:size]], next_page_token=token)

    async def GetInboxUnreadCount(self, request: IS.GetInboxUnreadCountRequest, context: grpc.aio.ServicerContext) -> IS.GetInboxUnreadCountResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_identifier(v, "subject_id", request.subject_id)
        v.raise_if_any()
        return IS.GetInboxUnreadCountResponse(unread_count=await self._inbox.unread_count(tenant, request.subject_id))

    async def MarkInboxMessagesRead(self, request: IS.MarkInboxMessagesReadRequest, context: grpc.aio.ServicerContext) -> IS.MarkInboxMessagesReadResponse:
        tenant = current_principal().tenant
        _check_ids(request.subject_id, request.message_ids, request.request_id)
        return IS.MarkInboxMessagesReadResponse(unread_count=await self._inbox.mark_read(tenant, request.subject_id, request.message_ids))

    async def MarkAllInboxMessagesRead(self, request: IS.MarkAllInboxMessagesReadRequest,
                                       context: grpc.aio.ServicerContext) -> IS.MarkAllInboxMessagesReadResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_identifier(v, "subject_id", request.subject_id)
        check_identifier(v, "request_id", request.request_id, required=False)
        v.raise_if_any()
        return IS.MarkAllInboxMessagesReadResponse(marked_count=await self._inbox.mark_all_read(tenant, request.subject_id))

    async def ArchiveInboxMessages(self, request: IS.ArchiveInboxMessagesRequest, context: grpc.aio.ServicerContext) -> IS.ArchiveInboxMessagesResponse:
        tenant = current_principal().tenant
        _check_ids(request.subject_id, request.message_ids, request.request_id)
        return IS.ArchiveInboxMessagesResponse(unread_count=await self._inbox.archive(tenant, request.subject_id, request.message_ids))

    async def CreateInboxToken(self, request: IS.CreateInboxTokenRequest, context: grpc.aio.ServicerContext) -> IS.CreateInboxTokenResponse:
        tenant = current_principal().tenant
        v = Violations()
        check_identifier(v, "subject_id", request.subject_id)
        ttl = request.ttl.ToTimedelta() if request.HasField("ttl") else _TTL_DEFAULT
        if not _TTL_MIN <= ttl <= _TTL_MAX:
            v.add("ttl", "ttl must be from 1 minute to 1 day", "OUT_OF_RANGE")
        v.raise_if_any()
        if not self._links.enabled:
            raise FailedPrecondition("no signing key is configured (OVERTURE_SIGNING_KEYS)", reason="NO_SIGNING_KEY")
        now = self._clock.now()
        expires = now + ttl
        response = IS.CreateInboxTokenResponse(token=self._links.inbox_token(tenant, request.subject_id, now=now, expires=expires))
        response.expire_time.FromDatetime(expires)
        return response


def _check_ids(subject_id: str, message_ids: object, request_id: str) -> None:
    v = Violations()
    check_identifier(v, "subject_id", subject_id)
    check_identifier(v, "request_id", request_id, required=False)
    ids = list(message_ids)  # type: ignore[call-overload]
    if not ids:
        v.add("message_ids", "message_ids needs 1 to 100 ids", "REQUIRED")
    elif len(ids) > _MAX_IDS:
        v.add("message_ids", f"message_ids holds at most {_MAX_IDS} ids", "TOO_MANY")
    for index, message_id in enumerate(ids[:_MAX_IDS]):
        check_identifier(v, f"message_ids[{index}]", message_id)
    v.raise_if_any()
