"""``overture deliveries``: what the connectors did with each message, and
settling the ones whose outcome is unknown (in doubt)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .client import new_request_id, target
from .output import Fields, Table, emit, run_async, short

if TYPE_CHECKING:
    from overture.connectors.v1 import delivery_pb2

__all__ = ["add_commands"]

_STATUSES = ("in_doubt", "sending")


def deliveries_table(deliveries: list[delivery_pb2.Delivery], *, empty: str) -> Table:
    """Deliveries as one table, newest first."""
    from overture.common.v1 import messaging_pb2

    return Table(["key", "delivery", "connector", "channel", "status", "attempts", "updated", "last error"], [
        [d.idempotency_key, d.delivery_id, d.connector, short(messaging_pb2.Channel, d.channel), short(messaging_pb2.DeliveryStatus, d.status),
         d.attempts, d.update_time.ToJsonString(), d.last_error[:80]] for d in deliveries
    ], empty=empty)


def deliveries_list(args: argparse.Namespace) -> int:
    """List deliveries, newest first; ``--status in_doubt`` lists those waiting for an operator."""
    from overture.common.v1 import messaging_pb2
    from overture.connectors.v1 import connector_service_pb2 as CS
    from overture.connectors.v1 import connector_service_pb2_grpc

    async def go() -> int:
        t = target(args.token)
        status = messaging_pb2.DeliveryStatus.Value(f"DELIVERY_STATUS_{(args.status or 'unspecified').upper()}")
        async with t.channel("connectors") as channel:
            result = await connector_service_pb2_grpc.ConnectorServiceStub(channel).ListDeliveries(
                CS.ListDeliveriesRequest(status=status, page_size=args.limit), metadata=t.metadata)
        emit(result, as_json=args.json, human=lambda: [deliveries_table(list(result.deliveries), empty="no deliveries")])
        return 0

    return run_async(go)


def deliveries_resolve(args: argparse.Namespace) -> int:
    """Settle an in-doubt delivery as sent or failed; nothing is sent either way."""
    from overture.common.v1 import messaging_pb2
    from overture.connectors.v1 import connector_service_pb2 as CS
    from overture.connectors.v1 import connector_service_pb2_grpc

    async def go() -> int:
        t = target(args.token)
        request = CS.ResolveDeliveryRequest(idempotency_key=args.key, reason=args.reason, request_id=new_request_id(),
                                            resolution=messaging_pb2.DeliveryStatus.Value(f"DELIVERY_STATUS_{args.resolution.upper()}"))
        async with t.channel("connectors") as channel:
            result = await connector_service_pb2_grpc.ConnectorServiceStub(channel).ResolveDelivery(request, metadata=t.metadata)
        d = result.delivery
        emit(result, as_json=args.json, human=lambda: [Fields([
            ("key", d.idempotency_key), ("delivery", d.delivery_id), ("connector", d.connector),
            ("status", short(messaging_pb2.DeliveryStatus, d.status)), ("note", d.last_error),
        ])])
        return 0

    return run_async(go)


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser, fmt: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """Register ``deliveries``."""
    deliveries = sub.add_parser("deliveries", help="list deliveries and resolve in-doubt ones").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    p = deliveries.add_parser("list", help="list deliveries, newest first", parents=[common])
    p.add_argument("--status", choices=_STATUSES, default="", help="only in-doubt deliveries, or claims still sending")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=deliveries_list)
    p = deliveries.add_parser("resolve", help="settle an in-doubt delivery as sent or failed (nothing is sent)", parents=[common])
    p.add_argument("key", help="the delivery's idempotency key (run_id:step_id)")
    p.add_argument("--as", dest="resolution", choices=["sent", "failed"], required=True)
    p.add_argument("--reason", required=True, help="why you know, for the audit log")
    p.set_defaults(func=deliveries_resolve)
