"""Unit tests of :mod:`overture_runtime.clock`: injectable time and UUIDv7 ids."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from overture_runtime.clock import IdGenerator, ManualClock, SystemClock, new_id, utcnow

START = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)


def _unix_ms(id_: str) -> int:
    """The 48-bit Unix millisecond timestamp of a UUIDv7."""
    return uuid.UUID(id_).int >> 80


def test_manual_clock_starts_at_a_fixed_utc_time() -> None:
    """A ManualClock without a start time starts at 2025-01-01 12:00 UTC."""
    assert ManualClock().now() == datetime(2025, 1, 1, 12, tzinfo=UTC)
    assert ManualClock().now().tzinfo is not None


def test_manual_clock_stands_still_until_told() -> None:
    """Reading a ManualClock does not move it."""
    clock = ManualClock(START)
    assert clock.now() == clock.now() == START


def test_manual_clock_advance_moves_forward() -> None:
    """advance adds the delta to the current time, cumulatively."""
    clock = ManualClock(START)
    clock.advance(timedelta(minutes=5))
    clock.advance(timedelta(seconds=30))
    assert clock.now() == START + timedelta(minutes=5, seconds=30)


def test_manual_clock_set_jumps_to_a_time() -> None:
    """set moves the clock to the given time, even backwards."""
    clock = ManualClock(START)
    earlier = START - timedelta(days=1)
    clock.set(earlier)
    assert clock.now() == earlier


def test_system_clock_and_utcnow_are_aware_utc() -> None:
    """The real clock returns timezone-aware UTC datetimes."""
    assert SystemClock().now().utcoffset() == timedelta(0)
    assert utcnow().utcoffset() == timedelta(0)


def test_ids_are_rfc9562_version_7_uuid_strings() -> None:
    """Ids are canonical lower-case UUID strings of version 7 and the RFC 9562 variant."""
    ids = IdGenerator(ManualClock(START))
    for _ in range(50):
        value = ids.new()
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122


def test_ids_carry_the_clock_time_in_milliseconds() -> None:
    """An id's timestamp field is the injected clock's Unix time in milliseconds."""
    clock = ManualClock(START + timedelta(microseconds=123_456))
    assert _unix_ms(IdGenerator(clock).new()) == int(START.timestamp()) * 1000 + 123


def test_ids_sort_by_creation_time() -> None:
    """Ids created at later clock times sort after earlier ones, as strings."""
    clock = ManualClock(START)
    ids = IdGenerator(clock)
    created = []
    for step in [timedelta(milliseconds=1), timedelta(seconds=1), timedelta(days=400), timedelta(milliseconds=1)] * 5:
        created.append(ids.new())
        clock.advance(step)
    assert sorted(created) == created
    assert len(set(created)) == len(created)


def test_ids_are_unique_at_the_same_instant() -> None:
    """Ids created at the same clock time are still distinct."""
    ids = IdGenerator(ManualClock(START))
    assert len({ids.new() for _ in range(1000)}) == 1000


def test_ids_created_in_the_same_millisecond_sort_in_creation_order() -> None:
    """Ids generated one after another at the same clock time still sort in generation order."""
    ids = IdGenerator(ManualClock(START))
    created = [ids.new() for _ in range(20)]
    assert sorted(created) == created


def test_ids_stay_ordered_past_the_per_millisecond_counter() -> None:
    """More ids in one millisecond than the 12-bit counter holds still sort in creation order and stay unique."""
    ids = IdGenerator(ManualClock(START))
    created = [ids.new() for _ in range(5000)]
    assert sorted(created) == created
    assert len(set(created)) == len(created)
    assert all(_unix_ms(value) >= int(START.timestamp() * 1000) for value in created)


def test_new_id_uses_the_system_clock() -> None:
    """new_id gives a version-7 id stamped with the current time."""
    value = new_id()
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    assert uuid.UUID(value).version == 7
    assert abs(_unix_ms(value) - now_ms) < 60_000


def test_a_forked_child_makes_ids_other_than_its_parents() -> None:
    """Random bits are read ahead in a buffer; a forked child must not reuse what its parent read (OVERTURE_WORKERS forks)."""
    import os

    new_id()  # the parent has bits buffered
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read)
        os.write(write, "\n".join(new_id()[-12:] for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split("\n"))
    os.waitpid(pid, 0)
    parent = {new_id()[-12:] for _ in range(50)}
    assert len(child) == 50 and not child & parent
