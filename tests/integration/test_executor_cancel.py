"""Executor: upstream results in ``ctx.upstream`` and TaskCancelled on the ready topics, against the real broker."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest

from taskstream.executors import Registry
from taskstream.schemas import ReadyTask, Settings, TaskCancelled, TaskFailed, TaskStarted, TaskSucceeded, codec
from tests.conftest import wait_until
from tests.integration.test_executor import JOIN_TIMEOUT, EventLog, Feeder, committed, ready, running

pytestmark = pytest.mark.integration


def cancel(feeder: Feeder, task_id: str, priority: str = "medium", reason: str = "client") -> None:
    """Publish TaskCancelled as the processor does: to the task's ready topic, keyed by the task id."""
    event = TaskCancelled(task_id=task_id, occurred_at=datetime.now(UTC), producer="test", reason=reason)
    feeder.producer.produce(feeder.topics.ready(priority), codec.encode(event), task_id.encode(),
                            headers=codec.headers(event), on_delivery=feeder._delivered)
    assert feeder.producer.flush(10) == 0


def with_upstream(task: ReadyTask, upstream: str) -> ReadyTask:
    return ReadyTask(task_id=task.task_id, occurred_at=task.occurred_at, producer=task.producer, attempt=task.attempt,
                     handler=task.handler, priority=task.priority, payload=task.payload, upstream=upstream)


@pytest.fixture
def events(settings):
    log = EventLog(settings)
    yield log
    log.close()


@pytest.fixture
def quiet(settings) -> Settings:
    """No TaskStarted for long attempts, so 'nothing reported' means no event at all."""
    return settings.model_copy(update={"started_event_after_s": 60.0})


def test_handler_sees_upstream_results(settings, events):
    reg = Registry()
    seen: dict[str, dict] = {}

    @reg.handler("see")
    def see(payload, ctx):
        seen[ctx.task_id] = ctx.upstream
        return sorted(ctx.upstream)

    a, b = uuid.uuid4().hex, uuid.uuid4().hex
    upstream = {a: {"rows": [1, 2]}, "extract": {"rows": [1, 2]}, b: None, "big": None}
    feeder = Feeder(settings)
    wf, plain, bad, wrong = feeder.send(
        with_upstream(ready("see"), codec.dumps_json(upstream)),
        ready("see"),
        with_upstream(ready("see"), "{not json"),
        with_upstream(ready("see"), "[1, 2]"),
    )
    with running(settings, reg):
        got = events.wait_for([t.task_id for t in (wf, plain, bad, wrong)])
        wait_until(lambda: committed(settings) == feeder.positions, message="offsets committed")
    assert seen[wf.task_id] == upstream  # ids and keys; None for a result too large to carry
    assert seen[plain.task_id] == {}
    assert seen[bad.task_id] == {} and seen[wrong.task_id] == {}  # bad field: {} and a warning, no crash
    for evs in got.values():
        assert [type(e) for e in evs] == [TaskSucceeded]


def test_buffered_attempt_cancelled_before_it_starts_never_runs(quiet, events):
    reg = Registry()
    ran: list[str] = []
    entered = threading.Event()
    release = threading.Event()

    @reg.handler("block")
    async def block(payload, ctx):
        ran.append(ctx.task_id)
        entered.set()
        while not release.is_set():
            await asyncio.sleep(0.01)
        return "released"

    @reg.handler("record")
    def record(payload, ctx):
        ran.append(ctx.task_id)
        return "ran"

    feeder = Feeder(quiet)
    [blocker] = feeder.send(ready("block"))
    try:
        with running(quiet, reg, concurrency=1) as ex:
            assert entered.wait(JOIN_TIMEOUT)
            [victim] = feeder.send(ready("record", priority="low"))  # waits: the only slot is taken
            wait_until(
                lambda: any(t.task_id == victim.task_id for t in ex.intake.buffered()), message="victim buffered"
            )
            cancel(feeder, victim.task_id, priority="low")
            wait_until(lambda: ex.intake.was_cancelled(victim.task_id), message="cancellation seen")
            assert not any(t.task_id == victim.task_id for t in ex.intake.buffered())
            release.set()
            # Redelivered after a rebalance, say: a cancelled task's ReadyTask is skipped too.
            [_, after] = feeder.send(ready("record", priority="low", task_id=victim.task_id), ready("record"))
            got = events.wait_for([blocker.task_id, after.task_id])
            wait_until(lambda: committed(quiet) == feeder.positions, message="offsets committed past the cancelled")
    finally:
        release.set()
    assert victim.task_id not in ran
    assert ran == [blocker.task_id, after.task_id]
    assert events.for_task(victim.task_id) == []
    assert [type(e) for e in got[blocker.task_id]] == [TaskSucceeded]


def test_running_attempts_are_cancelled_and_not_reported(quiet, events):
    reg = Registry()
    entered = {"async": threading.Event(), "sync": threading.Event()}
    async_cancelled = threading.Event()
    sync_saw_flag = threading.Event()

    @reg.handler("long.async")
    async def long_async(payload, ctx):
        entered["async"].set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            async_cancelled.set()
            raise
        return "never"

    @reg.handler("long.sync")
    def long_sync(payload, ctx):
        entered["sync"].set()
        deadline = time.monotonic() + 10
        while not ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        if ctx.cancelled:
            sync_saw_flag.set()
            return "stopped early"
        raise RuntimeError("never saw ctx.cancelled")

    feeder = Feeder(quiet)
    a, s = feeder.send(ready("long.async", priority="high"), ready("long.sync"))
    with running(quiet, reg, concurrency=2):
        assert entered["async"].wait(JOIN_TIMEOUT) and entered["sync"].wait(JOIN_TIMEOUT)
        cancel(feeder, a.task_id, priority="high")
        cancel(feeder, s.task_id)
        assert async_cancelled.wait(5), "the async handler was not cancelled"
        assert sync_saw_flag.wait(5), "the sync handler never saw ctx.cancelled"
        wait_until(lambda: committed(quiet) == feeder.positions, message="offsets of cancelled attempts committed")
        # Both slots are free again: a new task runs.
        [marker] = feeder.send(ready("echo", "after"))
        events.wait_for([marker.task_id])
        wait_until(lambda: committed(quiet) == feeder.positions, message="marker committed")
    assert events.for_task(a.task_id) == [] and events.for_task(s.task_id) == []


def test_cancelled_async_handler_that_swallows_cancellation_is_not_reported(settings, events):
    quick = settings.model_copy(update={"started_event_after_s": 0.1})
    reg = Registry()
    entered = threading.Event()

    @reg.handler("stubborn")
    async def stubborn(payload, ctx):
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return {"cleaned_up": ctx.cancelled}
        return "never"

    feeder = Feeder(quick)
    [task] = feeder.send(ready("stubborn"))
    with running(quick, reg):
        assert entered.wait(JOIN_TIMEOUT)
        wait_until(lambda: events.for_task(task.task_id), message="TaskStarted of the long attempt")
        cancel(feeder, task.task_id)
        wait_until(lambda: committed(quick) == feeder.positions, message="offsets committed")
        [marker] = feeder.send(ready("echo", 1))
        events.wait_for([marker.task_id])
    # Reported before the cancellation: TaskStarted; after it: nothing, though the handler returned a value.
    assert [type(e) for e in events.for_task(task.task_id)] == [TaskStarted]


def test_cancellation_of_unknown_or_finished_task_is_harmless(settings, events):
    feeder = Feeder(settings)
    [done] = feeder.send(ready("echo", "first"))
    with running(settings):
        events.wait_for([done.task_id])
        cancel(feeder, done.task_id)  # already finished here
        cancel(feeder, uuid.uuid4().hex, priority="high")  # never seen
        cancel(feeder, uuid.uuid4().hex, priority="low", reason="")
        [after] = feeder.send(ready("echo", "second"))
        got = events.wait_for([after.task_id])
        wait_until(lambda: committed(settings) == feeder.positions, message="all offsets committed")
    assert [type(e) for e in events.for_task(done.task_id)] == [TaskSucceeded]
    assert [type(e) for e in got[after.task_id]] == [TaskSucceeded]
    assert not [e for e in events.events() if isinstance(e, TaskFailed)]
