"""Executor and time, against the real broker: heartbeats, checkpoints, default timeouts, long handlers.

Each test publishes ReadyTask records itself (no processor) and reads back
``<p>.events`` and ``<p>.heartbeats``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from itertools import pairwise

import pytest

from taskstream.executors import AttemptAbandoned, Registry
from taskstream.schemas import Heartbeat, TaskCheckpointed, TaskFailed, TaskSucceeded, Topics, codec
from tests.conftest import SESSION_TIMEOUT_MS, wait_until
from tests.integration.test_executor import JOIN_TIMEOUT, EventLog, Feeder, TopicReader, committed, ready, running

pytestmark = pytest.mark.integration


@pytest.fixture
def events(settings):
    log = EventLog(settings)
    yield log
    log.close()


class Heartbeats(TopicReader):
    def __init__(self, settings) -> None:
        super().__init__(settings, Topics(settings.prefix).heartbeats)

    def beats(self) -> list[Heartbeat]:
        out = []
        for m in self.poll():
            beat = codec.decode(m.value())
            assert isinstance(beat, Heartbeat) and m.key() == beat.task_id.encode()
            out.append(beat)
        return out


@pytest.fixture
def heartbeats(settings):
    reader = Heartbeats(settings)
    yield reader
    reader.close()


def kinds(evs) -> list[str]:
    return [type(e).__name__ for e in evs]


# ------------------------------------------------------------------ heartbeats


def test_long_attempt_heartbeats_until_it_ends_short_one_never(settings, events, heartbeats):
    fast = settings.model_copy(update={"heartbeat_interval_s": 0.3, "started_event_after_s": 0.2})
    feeder = Feeder(fast)
    long_, short = feeder.send(ready("sleep", {"seconds": 2.5}, attempt=3), ready("sleep", {"seconds": 0}))
    with running(fast, executor_id="beating"):
        got = events.wait_for([long_.task_id, short.task_id])
        result = got[long_.task_id][-1]
        assert kinds(got[long_.task_id]) == ["TaskStarted", "TaskSucceeded"]
        # Nothing can be awaited for "no more heartbeats": give a late one three intervals to show up.
        time.sleep(0.9)
        beats = heartbeats.beats()
    mine = [b for b in beats if b.task_id == long_.task_id]
    assert {b.task_id for b in beats} == {long_.task_id}, "the short attempt heartbeated"
    # (2.5 - 0.2) / 0.3 ≈ 7 beats; a loaded machine may lose a few to timer lateness.
    assert 4 <= len(mine) <= 9, [b.occurred_at for b in mine]
    assert {(b.attempt, b.producer) for b in mine} == {(3, "beating")}
    times = [b.occurred_at for b in mine]
    gaps = [(b - a).total_seconds() for a, b in pairwise(times)]
    assert all(0.25 <= g <= 1.5 for g in gaps), gaps
    assert times[-1] <= result.occurred_at  # none after the attempt ended
    assert (times[0] - got[long_.task_id][0].occurred_at).total_seconds() < 1.0


# ----------------------------------------------------------------- checkpoints


def test_checkpoints_from_async_and_sync_handlers_precede_the_result(settings, events):
    quiet = settings.model_copy(update={"started_event_after_s": 60.0})  # only a checkpoint reports TaskStarted
    reg = Registry()
    seen = {"async": threading.Event(), "sync": threading.Event()}
    got_back: dict = {}

    @reg.handler("cp.async")
    async def cp_async(payload, ctx):
        got_back["async_await"] = await ctx.checkpoint({"step": 1})
        # The checkpoint is in the log while the handler still runs (the test saw it).
        assert await asyncio.to_thread(seen["async"].wait, JOIN_TIMEOUT)
        ctx.checkpoint({"step": 2})  # not awaited: still written, and before the result
        return "async done"

    @reg.handler("cp.sync")
    def cp_sync(payload, ctx):
        got_back["sync"] = ctx.checkpoint([1, "two", None])
        assert seen["sync"].wait(JOIN_TIMEOUT)
        errors = []
        try:
            ctx.checkpoint({"when": object()})
        except TypeError as exc:
            errors.append(str(exc))
        try:
            ctx.checkpoint("x" * (256 * 1024))  # 256 KiB + the two quotes
        except ValueError as exc:
            errors.append(str(exc))
        ctx.checkpoint("y" * (256 * 1024 - 2))  # exactly at the limit
        return errors

    feeder = Feeder(quiet)
    a, s = feeder.send(ready("cp.async", attempt=2), ready("cp.sync"))
    with running(quiet, reg, executor_id="cp-exec"):
        wait_until(lambda: any(isinstance(e, TaskCheckpointed) for e in events.for_task(a.task_id)),
                   timeout=JOIN_TIMEOUT, message="the async checkpoint in the log")
        seen["async"].set()
        wait_until(lambda: any(isinstance(e, TaskCheckpointed) for e in events.for_task(s.task_id)),
                   timeout=JOIN_TIMEOUT, message="the sync checkpoint in the log")
        seen["sync"].set()
        got = events.wait_for([a.task_id, s.task_id])

    assert got_back == {"async_await": None, "sync": None}
    ev_a, ev_s = got[a.task_id], got[s.task_id]
    assert kinds(ev_a) == ["TaskStarted", "TaskCheckpointed", "TaskCheckpointed", "TaskSucceeded"]
    assert [codec.loads_json(e.data) for e in ev_a[1:3]] == [{"step": 1}, {"step": 2}]
    assert all(e.attempt == 2 and e.producer == "cp-exec" for e in ev_a)
    assert kinds(ev_s) == ["TaskStarted", "TaskCheckpointed", "TaskCheckpointed", "TaskSucceeded"]
    assert codec.loads_json(ev_s[1].data) == [1, "two", None]
    assert codec.loads_json(ev_s[2].data) == "y" * (256 * 1024 - 2)
    type_error, size_error = codec.loads_json(ev_s[-1].result)
    assert "JSON-serialisable" in type_error and "dict" in type_error and "object" in type_error
    assert size_error == "checkpoint too large: 262,146 bytes of JSON > 262,144"
    # Every event of a task has its key, so they share a partition in this order.
    keys = {m.key() for m in events.messages if codec.decode(m.value()).task_id == a.task_id}
    assert keys == {a.task_id.encode()}


def test_last_checkpoint_reaches_the_handler(settings, events):
    reg = Registry()

    @reg.handler("resume")
    async def resume(payload, ctx):
        return {"resumed_from": ctx.last_checkpoint}

    feeder = Feeder(settings)
    saved = dataclasses.replace(ready("resume", attempt=2), last_checkpoint='{"rows": 500, "cursor": "k9"}')
    garbled = dataclasses.replace(ready("resume", attempt=2), last_checkpoint="{not json")
    fresh = ready("resume")
    feeder.send(saved, garbled, fresh)
    with running(settings, reg):
        got = events.wait_for([saved.task_id, garbled.task_id, fresh.task_id])
    results = {t: codec.loads_json(evs[-1].result) for t, evs in got.items()}
    assert results[saved.task_id] == {"resumed_from": {"rows": 500, "cursor": "k9"}}
    assert results[garbled.task_id] == {"resumed_from": None}
    assert results[fresh.task_id] == {"resumed_from": None}


# -------------------------------------------------------------------- timeouts


def test_default_timeout_cancels_async_abandons_sync_and_ignores_its_late_result(settings, events):
    """Tasks without timeout_s get settings.default_timeout_s; an explicit timeout_s wins over it."""
    short = settings.model_copy(update={"default_timeout_s": 0.4})
    reg = Registry()
    cancelled = threading.Event()
    release = threading.Event()
    sync_returned = threading.Event()
    outcome: dict = {}

    @reg.handler("slow.async")
    async def slow_async(payload, ctx):
        try:
            await asyncio.sleep(payload)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "in time"

    @reg.handler("slow.sync")
    def slow_sync(payload, ctx):
        release.wait(JOIN_TIMEOUT)
        outcome["cancelled_flag"] = ctx.cancelled
        try:
            ctx.checkpoint({"late": True})
        except AttemptAbandoned as exc:
            outcome["checkpoint"] = str(exc)
        sync_returned.set()
        return "late"

    feeder = Feeder(short)
    a, s, patient = feeder.send(ready("slow.async", 30), ready("slow.sync"), ready("slow.async", 0.8, timeout_s=5))
    try:
        with running(short, reg):
            got = events.wait_for([a.task_id, s.task_id, patient.task_id])
            release.set()
            assert sync_returned.wait(5)
            wait_until(lambda: committed(short) == feeder.positions, message="offsets committed")
            time.sleep(0.3)  # a late result, if one were sent, is produced right after the handler returned
            assert events.for_task(s.task_id) == got[s.task_id]
    finally:
        release.set()
    for t in (a, s):
        [ev] = got[t.task_id]
        assert isinstance(ev, TaskFailed) and not ev.permanent
        assert ev.error.startswith("TimeoutError:") and "0.4s" in ev.error, ev.error
    assert cancelled.is_set()
    assert outcome["cancelled_flag"] is True and "no longer run" in outcome["checkpoint"]
    assert not any(isinstance(e, TaskCheckpointed) for e in events.for_task(s.task_id))
    [ok] = got[patient.task_id][-1:]
    assert isinstance(ok, TaskSucceeded) and codec.loads_json(ok.result) == "in time"


# ------------------------------------------------------------ group membership


def test_handler_running_twice_max_poll_interval_keeps_membership(settings, events, heartbeats, caplog):
    """A sync handler blocks its thread for 2 x max.poll.interval.ms: no rebalance, one run, heartbeats throughout."""
    beat = settings.model_copy(update={"heartbeat_interval_s": 1.0, "started_event_after_s": 0.2})
    max_poll_ms = SESSION_TIMEOUT_MS + 1000  # librdkafka's floor is session.timeout.ms (2000 in tests)
    run_s = 2 * max_poll_ms / 1000
    reg = Registry()
    calls = []

    @reg.handler("long.sync")
    def long_sync(payload, ctx):
        calls.append(ctx.attempt)
        time.sleep(run_s)
        return "survived"

    feeder = Feeder(beat)
    [task] = feeder.send(ready("long.sync"))
    caplog.set_level(logging.INFO, logger="taskstream.executors.runtime")
    with running(beat, reg, consumer_overrides={"max.poll.interval.ms": max_poll_ms}) as ex:
        assert ex.assigned_event.wait(JOIN_TIMEOUT)
        got = events.wait_for([task.task_id], timeout=JOIN_TIMEOUT + run_s)[task.task_id]
        wait_until(lambda: committed(beat) == feeder.positions, message="offset committed")
        beats = heartbeats.beats()
        # Before the executor leaves (which revokes everything): no partition was revoked or lost.
        membership = [
            r.getMessage() for r in caplog.records if " revoked " in r.getMessage() or " lost " in r.getMessage()
        ]
    assert membership == []
    assert calls == [1]
    assert kinds(got) == ["TaskStarted", "TaskSucceeded"] and codec.loads_json(got[-1].result) == "survived"
    times = [b.occurred_at for b in beats if b.task_id == task.task_id]
    assert len(times) >= run_s - 3, times
    gaps = [(b - a).total_seconds() for a, b in pairwise(times)]
    assert max(gaps) < 2.5, gaps
