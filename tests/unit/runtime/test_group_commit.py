"""Group commit: concurrent writers share inserts; durable writers learn per
row whether it was new; rows that queue during an insert go together in the
next one; a failed group is reported (durable) or kept and tried again (not
durable); a row being inserted can be waited for."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from overture_runtime.group_commit import GroupWriter

Key = tuple[str, str]


class Store:
    """An insert that records its groups, can be held back at its start, and can fail."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.rows: dict[Key, dict[str, Any]] = {}
        self.hold: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.failures = 0

    async def insert(self, rows: list[dict[str, Any]]) -> set[Key]:
        self.entered.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the database went away")
        self.groups.append([row["id"] for row in rows])
        new: set[Key] = set()
        for row in rows:
            key = (row["tenant"], row["id"])
            if key not in self.rows:
                self.rows[key] = dict(row)
                new.add(key)
        return new


def _writer(store: Store, **options: Any) -> GroupWriter:
    writer = GroupWriter(store.insert, key=lambda row: (row["tenant"], row["id"]), name="test", **options)
    writer.start()
    return writer


def _row(i: str, **extra: Any) -> dict[str, Any]:
    return {"tenant": "acme", "id": i, **extra}


async def test_durable_writers_share_a_group_and_learn_which_rows_were_new() -> None:
    """Concurrent writes go in one insert; each caller hears, per row, whether it was new (the first of a repeated key
    in one group, not the second; a key stored before, never)."""
    store = Store()
    writer = _writer(store)
    await writer.write([_row("old")])
    answers = await asyncio.gather(writer.write([_row("a"), _row("b")]), writer.write([_row("a")]), writer.write([_row("old")]))
    await writer.close()
    assert answers == [[True, True], [False], [False]]
    assert store.groups == [["old"], ["a", "b", "a", "old"]]


async def test_rows_queued_during_an_insert_go_together_in_the_next_one() -> None:
    """While one group is being inserted, rows from three callers queue; they go in one insert after it, not one each."""
    store = Store()
    store.hold = asyncio.Event()
    writer = _writer(store)
    first = asyncio.create_task(writer.write([_row("first")]))
    await store.entered.wait()
    rest = [asyncio.create_task(writer.write([_row(i)])) for i in ("x", "y", "z")]
    await asyncio.sleep(0)
    store.hold.set()
    await asyncio.gather(first, *rest)
    await writer.close()
    assert store.groups == [["first"], ["x", "y", "z"]]


async def test_a_durable_failure_reaches_every_caller_of_the_group() -> None:
    """A failed insert is raised to each caller of its group, and later writes go on."""
    store = Store()
    store.failures = 1
    writer = _writer(store)
    results = await asyncio.gather(writer.write([_row("a")]), writer.write([_row("b")]), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert await writer.write([_row("c")]) == [True]
    await writer.close()
    assert store.groups == [["c"]]


async def test_not_durable_rows_are_kept_through_a_failure_and_readable_until_stored() -> None:
    """Not durable, a write returns at once; its row can be read back (pending) until stored; a failed insert keeps the
    rows and tries them again."""
    store = Store()
    store.failures = 1
    writer = _writer(store, durable=False, max_delay=0.0)
    assert await writer.write([_row("a", state="held")], ["object a"]) == [True]
    assert writer.pending(("acme", "a")) == "object a"
    async with asyncio.timeout(10):  # the retry comes after a pause of its own
        while ("acme", "a") not in store.rows:
            await asyncio.sleep(0.01)
    assert store.failures == 0 and store.groups == [["a"]]
    assert writer.pending(("acme", "a")) is None
    await writer.close()


async def test_a_row_being_inserted_can_be_waited_for_and_is_then_stored() -> None:
    """amend changes a queued row; once its group is taken it cannot, and landed waits for that insert (True), after
    which the row is stored; for a row not being inserted landed answers False at once."""
    store = Store()
    store.hold = asyncio.Event()
    writer = _writer(store, durable=False, max_delay=0.0)
    await writer.write([_row("a", state="held")], ["a"])
    await store.entered.wait()  # taken: being inserted
    assert not writer.amend(("acme", "a"), "a", state="committed")
    await writer.write([_row("b", state="held")], ["b"])
    assert writer.amend(("acme", "b"), "b", state="committed")  # still queued
    waiting = asyncio.create_task(writer.landed(("acme", "a")))
    await asyncio.sleep(0)
    assert not waiting.done()
    store.hold.set()
    assert await waiting is True
    assert ("acme", "a") in store.rows
    assert await writer.landed(("acme", "nobody")) is False
    await writer.close()
    assert store.rows[("acme", "b")]["state"] == "committed"


async def test_a_closed_writer_refuses_writes() -> None:
    """After close, a write is an error, not a row silently dropped."""
    writer = _writer(Store())
    await writer.close()
    with pytest.raises(RuntimeError):
        await writer.write([_row("late")])
