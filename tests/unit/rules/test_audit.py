"""Unit tests of the pure parts of :mod:`overture_rules.audit`: entry hashes and chain verification."""

from __future__ import annotations

import datetime as dt

from overture.rules.v1 import audit_event_pb2 as A
from overture_rules.audit import entry_hash, verify_chain
from overture_runtime.protojson import struct_from_dict, struct_to_dict

T0 = dt.datetime(2025, 5, 1, 9, 30, 15, 123456, tzinfo=dt.UTC)


def make_chain(count: int = 4) -> list[A.AuditEvent]:
    """A correctly chained list of *count* audit events, built as `append` builds them."""
    events: list[A.AuditEvent] = []
    previous = ""
    actions = [A.AUDIT_ACTION_RULE_SET_VERSION_CREATED, A.AUDIT_ACTION_RULE_SET_VERSION_ACTIVATED,
               A.AUDIT_ACTION_RULE_SET_ROLLED_BACK, A.AUDIT_ACTION_PROFILE_ERASED]
    for i in range(1, count + 1):
        action = actions[(i - 1) % len(actions)]
        time = T0 + dt.timedelta(minutes=i)
        details = {"version": str(i), "digest": f"abc{i}"}
        event = A.AuditEvent(
            sequence=i, action=action, actor="alice@acme", reason=f"change {i}", target=f"rule_set/marketing-email/{i}",
            details=struct_from_dict(details), previous_hash=previous,
        )
        event.time.FromDatetime(time)
        event.hash = entry_hash(
            sequence=i, action=A.AuditAction.Name(action), actor="alice@acme", time=time, reason=f"change {i}",
            target=f"rule_set/marketing-email/{i}", details=details, previous_hash=previous,
        )
        previous = event.hash
        events.append(event)
    return events


def rehash(event: A.AuditEvent) -> None:
    """Recompute *event*'s hash from its fields, as a forger who edits an entry would."""
    event.hash = entry_hash(
        sequence=event.sequence, action=A.AuditAction.Name(event.action), actor=event.actor,
        time=event.time.ToDatetime(tzinfo=dt.UTC), reason=event.reason, target=event.target,
        details=struct_to_dict(event.details), previous_hash=event.previous_hash,
    )


def test_entry_hash_is_deterministic_sha256_hex() -> None:
    """The same fields always hash to the same 64-character lower-case hex digest."""
    kwargs = {"sequence": 1, "action": "AUDIT_ACTION_PROFILE_ERASED", "actor": "a", "time": T0, "reason": "r", "target": "t",
              "details": {"b": "2", "a": "1"}, "previous_hash": ""}
    first = entry_hash(**kwargs)  # type: ignore[arg-type]
    assert first == entry_hash(**kwargs)  # type: ignore[arg-type]
    assert len(first) == 64
    assert first == first.lower()
    int(first, 16)


def test_entry_hash_ignores_detail_key_order() -> None:
    """Details are hashed as canonical JSON, so their key order does not matter."""
    common = {"sequence": 1, "action": "X", "actor": "a", "time": T0, "reason": "r", "target": "t", "previous_hash": ""}
    assert entry_hash(details={"a": "1", "b": "2"}, **common) == entry_hash(details={"b": "2", "a": "1"}, **common)  # type: ignore[arg-type]


def test_entry_hash_covers_every_field() -> None:
    """Changing any one field changes the hash."""
    base: dict[str, object] = {"sequence": 1, "action": "X", "actor": "a", "time": T0, "reason": "r", "target": "t",
                               "details": {"k": "v"}, "previous_hash": "p"}
    original = entry_hash(**base)  # type: ignore[arg-type]
    edits: dict[str, object] = {"sequence": 2, "action": "Y", "actor": "b", "time": T0 + dt.timedelta(microseconds=1), "reason": "s",
                                "target": "u", "details": {"k": "w"}, "previous_hash": "q"}
    for name, value in edits.items():
        assert entry_hash(**{**base, name: value}) != original, name  # type: ignore[arg-type]


def test_correct_chain_verifies() -> None:
    """A chain built with entry_hash, each entry naming the previous hash, verifies."""
    assert verify_chain(make_chain()) is None


def test_empty_chain_verifies() -> None:
    """An empty chain has nothing to contradict it."""
    assert verify_chain([]) is None


def test_changed_reason_is_reported_at_that_entry() -> None:
    """Editing the reason of an entry breaks its hash, and verification reports that entry."""
    chain = make_chain()
    chain[2].reason = "nothing to see here"
    assert verify_chain(chain) == (3, "the entry's content does not match its hash")


def test_changed_details_are_reported() -> None:
    """Editing an entry's details is reported at that entry."""
    chain = make_chain()
    chain[1].details.update({"version": "99"})
    assert verify_chain(chain) == (2, "the entry's content does not match its hash")


def test_rehashed_entry_breaks_the_next_link() -> None:
    """An edited entry whose hash was recomputed is caught at the next entry, whose previous_hash no longer matches."""
    chain = make_chain()
    chain[1].reason = "forged"
    rehash(chain[1])
    assert verify_chain(chain) == (3, "previous_hash does not match the previous entry")


def test_broken_previous_hash_is_reported() -> None:
    """An entry whose previous_hash is not the previous entry's hash is reported."""
    chain = make_chain()
    chain[3].previous_hash = "0" * 64
    assert verify_chain(chain) == (4, "previous_hash does not match the previous entry")


def test_first_entry_must_have_empty_previous_hash() -> None:
    """The first entry's previous_hash must be empty."""
    chain = make_chain()
    chain[0].previous_hash = "f" * 64
    rehash(chain[0])
    assert verify_chain(chain) == (1, "previous_hash does not match the previous entry")


def test_missing_entry_is_reported() -> None:
    """A deleted entry leaves a gap in sequence numbers, reported at the entry after the gap."""
    chain = make_chain()
    del chain[1]
    result = verify_chain(chain)
    assert result is not None
    assert result[0] == 3
    assert "expected sequence 2" in result[1]


def test_chain_must_start_at_one() -> None:
    """A chain whose first entry is not sequence 1 is missing its beginning."""
    result = verify_chain(make_chain()[1:])
    assert result is not None
    assert result[0] == 2
    assert "expected sequence 1" in result[1]


def test_only_the_first_problem_is_reported() -> None:
    """With several tampered entries, verification reports the earliest."""
    chain = make_chain()
    chain[3].reason = "later"
    chain[1].actor = "mallory"
    assert verify_chain(chain) == (2, "the entry's content does not match its hash")


def test_verify_accepts_any_iterable() -> None:
    """verify_chain walks any iterable, such as a generator over stored rows."""
    assert verify_chain(iter(make_chain())) is None
