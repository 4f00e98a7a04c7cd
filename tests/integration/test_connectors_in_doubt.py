"""Sends are not repeated: a real SMTP server that takes the message but drops the reply on 10% of
2,000 sends, with every batch then sent again, yields no duplicate and no unaccounted send."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

from overture.common.v1 import messaging_pb2
from overture.connectors.v1 import connector_service_pb2 as C
from overture_runtime.config import Settings
from tests.conftest import admin_metadata

from .connectors_support import CountingSink, connectors_service, email

S = messaging_pb2
AUTH = admin_metadata()


async def test_two_thousand_sends_with_a_tenth_of_replies_lost_send_each_message_once_and_mark_every_doubt(
        make_settings: Callable[..., Settings]) -> None:
    """2,000 messages in batches of 250, 10% of whose replies the server drops after taking the message, then every batch sent again:
    the server receives each key exactly once, every dropped one is IN_DOUBT (SMTP has no status lookup), every other SENT, and the
    operator's list of in-doubt deliveries holds exactly the dropped ones."""
    keys = [f"run-{i:04d}:send" for i in range(2000)]
    dropped = set(random.Random(10).sample(keys, 200))
    statuses: dict[str, int] = {}
    with CountingSink() as sink:
        sink.drop_after_data.update(dropped)
        async with connectors_service(make_settings, sink, connector_providers='[{"name": "smtp", "kind": "smtp", '
                                      '"breaker": {"failure_threshold": 10000}}]') as service:
            for _round in range(2):
                for start in range(0, 2000, 250):
                    batch = [email(k) for k in keys[start:start + 250]]
                    response = await service.stub.SendBatch(C.SendBatchRequest(messages=batch), metadata=AUTH)
                    for result in response.results:
                        statuses[result.delivery.idempotency_key] = result.delivery.status
            listed: list[str] = []
            token = ""
            while True:
                page = await service.stub.ListDeliveries(C.ListDeliveriesRequest(status=S.DELIVERY_STATUS_IN_DOUBT, page_size=100,
                                                                                  page_token=token), metadata=AUTH)
                listed.extend(d.idempotency_key for d in page.deliveries)
                token = page.next_page_token
                if not token:
                    break
    received = Counter(sink.keys)
    duplicates = sum(n - 1 for n in received.values() if n > 1)
    print(f"\nsends=2000 dropped_replies={len(dropped)} received={len(received)} duplicates={duplicates} "
          f"in_doubt={sum(s == S.DELIVERY_STATUS_IN_DOUBT for s in statuses.values())}")
    assert duplicates == 0 and set(received) == set(keys)
    assert {k for k, s in statuses.items() if s == S.DELIVERY_STATUS_IN_DOUBT} == dropped
    assert {k for k, s in statuses.items() if s == S.DELIVERY_STATUS_SENT} == set(keys) - dropped
    assert sorted(listed) == sorted(dropped)
