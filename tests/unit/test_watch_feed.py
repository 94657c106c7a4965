"""The change feed behind SSE and gRPC watches (api/watch.py): ring, resume ranges, fan-out, cursors."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from taskstream.api.watch import ChangeFeed, Cursor, Filter, parse_event_id
from taskstream.schemas import TaskState, ValidationError

AT = datetime(2026, 1, 1, tzinfo=UTC)


def state(task_id: str, version: int = 1, status: str = "queued", handler: str = "h") -> TaskState:
    return TaskState(task_id=task_id, handler=handler, status=status, priority="medium", payload="{}",
                     created_at=AT, updated_at=AT, version=version)


def test_cursor_text_round_trips_and_bad_text_names_the_field() -> None:
    assert Cursor.decode("12.0.7") == (12, 0, 7) and Cursor([12, 0, 7]).encode() == "12.0.7"
    assert Cursor([1]).advanced(2, 9) == (1, 0, 10) and Cursor([5, 1]).merged([2, 3, 4]) == (5, 3, 4)
    assert parse_event_id("3.4:7", "Last-Event-ID") == ((3, 4), 7)
    for bad in ("", "a", "1..2", "1.-2", "1:x", "1" * 19):
        with pytest.raises(ValidationError) as exc:
            parse_event_id(bad, "Last-Event-ID")
        assert exc.value.field == "Last-Event-ID"


def test_the_ring_replays_what_it_holds_and_names_the_ranges_it_lost() -> None:
    async def run() -> None:
        feed, stored = ChangeFeed(ring_size=3), []
        for i in range(5):
            feed.apply(0, i, state(f"t{i}"), stored.append)
        feed.apply(1, 0, state("u0"), stored.append)  # evicts partition 0's offset 2
        assert len(stored) == 6
        sub, start, replay, catch_up, _ = feed.subscribe(Filter(), Cursor([1]))
        assert start == (5, 1)
        assert [(c.partition, c.offset) for c in replay] == [(0, 3), (0, 4), (1, 0)]
        assert catch_up == {0: (1, 3)}  # offsets 1 and 2 of partition 0 are only in the topic now
        _, _, replay, catch_up, _ = feed.subscribe(Filter(handlers=frozenset({"x"})), Cursor([4, 0]))
        assert replay == [] and catch_up == {}
        feed.apply(0, 4, state("t4"), stored.append)  # re-read after a reconnect: stored, not published again
        feed.apply(0, 5, state("t5"), stored.append)
        await asyncio.sleep(0)
        got = sub.queue.get_nowait()
        assert (got.partition, got.offset, got.position) == (0, 5, (6, 1)) and sub.queue.empty()
        feed.close()
        assert feed.watchers == 2

    asyncio.run(run())


def test_fan_out_reaches_only_matching_watchers_and_unsubscribe_frees_them() -> None:
    async def run() -> None:
        feed = ChangeFeed()
        one, *_ = feed.subscribe(Filter(task_id="a"), None)
        done, *_ = feed.subscribe(Filter(statuses=frozenset({"succeeded"})), None)
        feed.apply(0, 0, state("a", 2), lambda s: None)
        feed.apply(0, 1, state("b", 2, "succeeded"), lambda s: None)
        await asyncio.sleep(0)
        assert one.queue.get_nowait().state.task_id == "a" and one.queue.empty()
        assert done.queue.get_nowait().state.task_id == "b" and done.queue.empty()
        feed.unsubscribe(one)
        feed.unsubscribe(done)
        assert feed.watchers == 0

    asyncio.run(run())
