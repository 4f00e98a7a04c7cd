"""Responses built as wire bytes parse as the messages protobuf would have built."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from overture.common.v1 import field_violation_pb2
from overture.rules.v1 import decision_pb2, rules_service_pb2
from overture_runtime.wire import Encoded, message_field

R = rules_service_pb2


@given(st.lists(st.one_of(st.none(), st.text(max_size=300)), max_size=40), st.integers(min_value=0, max_value=2**31 - 1))
def test_a_response_joined_from_serialized_parts_is_the_message_protobuf_builds(items: list[str | None], offset: int) -> None:
    built = R.EvaluateBatchResponse()
    parts = []
    for i, subject in enumerate(items):
        index = offset + i if offset + i < 2**31 else i
        if subject is None:
            result = R.EvaluateBatchResult(index=index, violations=[field_violation_pb2.FieldViolation(field="rule_set", description="x")])
            parts.append(result.SerializeToString())
        else:
            decision = decision_pb2.Decision(decision_id=f"d{i}", subject_id=subject, allowed=i % 2 == 0)
            result = R.EvaluateBatchResult(index=index, decision=decision)
            parts.append(R.EvaluateBatchResult(index=index).SerializeToString() + message_field(2, decision.SerializeToString()))
        built.results.append(result)
    encoded = Encoded(b"".join(message_field(1, p) for p in parts))
    assert R.EvaluateBatchResponse.FromString(encoded.data) == built
    assert encoded.data == built.SerializeToString()
