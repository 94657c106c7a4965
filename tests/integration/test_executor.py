"""The executor runtime against a real Kafka broker: each test has its own topic prefix."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from taskstream.executors import Executor, PermanentError, Registry
from taskstream.schemas import ReadyTask, Settings, TaskFailed, TaskStarted, TaskSucceeded, Topics, codec
from taskstream.schemas.kafka import producer_config
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

JOIN_TIMEOUT = 15.0


# ----------------------------------------------------------------- helpers


def ready(handler: str, payload=None, *, priority: str = "medium", task_id: str | None = None, attempt: int = 1,
          timeout_s: float | None = None) -> ReadyTask:
    return ReadyTask(
        task_id=task_id or uuid.uuid4().hex,
        occurred_at=datetime.now(UTC),
        producer="test",
        attempt=attempt,
        handler=handler,
        priority=priority,
        payload=codec.dumps_json(payload),
        timeout_s=timeout_s,
    )


class Feeder:
    """Produces ready messages (or raw bytes) and remembers where each landed."""

    def __init__(self, settings: Settings) -> None:
        self.topics = Topics(settings.prefix)
        self.producer = Producer(producer_config(settings, "test-feeder"))
        self.positions: dict[tuple[str, int], int] = {}  # (topic, partition) -> highest offset + 1

    def _delivered(self, err, msg) -> None:
        assert err is None, err
        key = (msg.topic(), msg.partition())
        self.positions[key] = max(self.positions.get(key, 0), msg.offset() + 1)

    def send(self, *tasks: ReadyTask) -> list[ReadyTask]:
        for t in tasks:
            self.producer.produce(self.topics.ready(t.priority), codec.encode(t), t.task_id.encode(),
                                  headers=codec.headers(t), on_delivery=self._delivered)
        assert self.producer.flush(10) == 0
        return list(tasks)

    def send_raw(self, topic: str, key: bytes, value: bytes) -> None:
        self.producer.produce(topic, value, key, on_delivery=self._delivered)
        assert self.producer.flush(10) == 0


class TopicReader:
    """Reads a whole topic from the beginning (all partitions assigned, no group)."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.consumer = Consumer({
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        })
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(settings.partitions)])
        self.messages: list = []

    def poll(self) -> list:
        for msg in self.consumer.consume(500, 0.05):
            if msg.error() is None:
                self.messages.append(msg)
        return self.messages

    def close(self) -> None:
        self.consumer.close()


class EventLog(TopicReader):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, Topics(settings.prefix).events)

    def events(self) -> list:
        return [codec.decode(m.value()) for m in self.poll()]

    def for_task(self, task_id: str) -> list:
        return [e for e in self.events() if e.task_id == task_id]

    def wait_for(self, task_ids, timeout: float = JOIN_TIMEOUT) -> dict[str, list]:
        """Wait until every task has a result event; return each task's events in log order."""
        ids = set(task_ids)

        def results():
            evs = self.events()
            done = {e.task_id for e in evs if isinstance(e, (TaskSucceeded, TaskFailed))}
            return ids <= done and evs

        evs = wait_until(results, timeout=timeout, message=f"results of {len(ids)} tasks")
        return {i: [e for e in evs if e.task_id == i] for i in ids}


def committed(settings: Settings) -> dict[tuple[str, int], int]:
    c = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": Topics(settings.prefix).executor_group})
    try:
        tps = [TopicPartition(t, p) for t in Topics(settings.prefix).all_ready for p in range(settings.partitions)]
        return {(tp.topic, tp.partition): tp.offset for tp in c.committed(tps, timeout=10) if tp.offset >= 0}
    finally:
        c.close()


@contextlib.contextmanager
def running(settings: Settings, registry: Registry | None = None, concurrency: int = 4, stop_timeout: float = 30.0,
            executor_id: str = "test-executor", **executor_kwargs):
    """Run an Executor on its own loop in a thread; stop it gracefully on exit."""
    executor = Executor(settings, registry=registry or Registry(), concurrency=concurrency, executor_id=executor_id,
                        **executor_kwargs)
    started = threading.Event()
    box: dict = {}

    def main() -> None:
        async def go() -> None:
            box["loop"] = asyncio.get_running_loop()
            box["stop"] = asyncio.Event()
            started.set()
            await executor.run(box["stop"])

        try:
            asyncio.run(go())
        except BaseException as exc:  # surfaced to the test below
            box["error"] = exc
            started.set()

    thread = threading.Thread(target=main, name="executor-under-test", daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield executor
    finally:
        if "loop" in box:
            box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(stop_timeout)
        assert not thread.is_alive(), "executor did not stop"
    if "error" in box:
        raise box["error"]


@pytest.fixture
def events(settings):
    log = EventLog(settings)
    yield log
    log.close()


# ------------------------------------------------------------------- tests


def test_echo_succeeds_and_commits(settings, events):
    feeder = Feeder(settings)
    [task] = feeder.send(ready("echo", {"hello": "world", "n": [1, 2]}))
    with running(settings):
        got = events.wait_for([task.task_id])[task.task_id]
        assert len(got) == 1, got  # a short attempt reports one event
        [ev] = got
        assert isinstance(ev, TaskSucceeded)
        assert ev.attempt == 1 and ev.producer == "test-executor"
        assert codec.loads_json(ev.result) == {"hello": "world", "n": [1, 2]}
        assert ev.started_at is not None and ev.started_at <= ev.occurred_at
        assert events.messages[0].key() == task.task_id.encode()
        assert dict(events.messages[0].headers())["event-type"] == b"TaskSucceeded"
        wait_until(lambda: committed(settings) == feeder.positions, message="offsets committed")


def test_async_and_sync_handlers(settings, events):
    reg = Registry()
    threads = {}

    @reg.handler("add.async")
    async def add_async(payload, ctx):
        await asyncio.sleep(0.01)
        threads["async"] = threading.current_thread().name
        return {"sum": payload["a"] + payload["b"], "key": ctx.idempotency_key}

    @reg.handler("add.sync")
    def add_sync(payload, ctx):
        threads["sync"] = threading.current_thread().name
        return payload["a"] + payload["b"]

    feeder = Feeder(settings)
    a, s = feeder.send(ready("add.async", {"a": 1, "b": 2}, attempt=3), ready("add.sync", {"a": 5, "b": 6}))
    with running(settings, reg):
        got = events.wait_for([a.task_id, s.task_id])
    assert codec.loads_json(got[a.task_id][-1].result) == {"sum": 3, "key": f"{a.task_id}:3"}
    assert got[a.task_id][-1].attempt == 3
    assert codec.loads_json(got[s.task_id][-1].result) == 11
    assert threads["sync"] != threads["async"]  # the sync one ran in the pool, not on the loop


def test_failures_unknown_handler_and_bad_result(settings, events):
    reg = Registry()

    @reg.handler("boom")
    def boom(payload, ctx):
        raise ValueError("bad things")

    @reg.handler("gone")
    async def gone(payload, ctx):
        raise PermanentError("the thing is gone")

    @reg.handler("weird")
    def weird(payload, ctx):
        return object()

    feeder = Feeder(settings)
    b, g, u, w, sl = feeder.send(ready("boom"), ready("gone"), ready("nope"), ready("weird"),
                                 ready("sleep", {"secs": 1}))
    with running(settings, reg):
        got = events.wait_for([b.task_id, g.task_id, u.task_id, w.task_id, sl.task_id])
        wait_until(lambda: committed(settings) == feeder.positions, message="offsets committed")
    [eb], [eg], [eu], [ew], [esl] = (got[t.task_id] for t in (b, g, u, w, sl))
    assert isinstance(eb, TaskFailed) and eb.error == "ValueError: bad things" and not eb.permanent
    assert eb.started_at is not None
    assert isinstance(eg, TaskFailed) and eg.error == "PermanentError: the thing is gone" and eg.permanent
    assert isinstance(eu, TaskFailed) and eu.error == "no handler registered for 'nope'" and eu.permanent
    assert isinstance(ew, TaskFailed) and not ew.permanent and "not JSON-serialisable" in ew.error
    assert isinstance(esl, TaskFailed) and esl.permanent and "'seconds'" in esl.error


def test_poison_message_goes_to_dlq_and_executor_goes_on(settings, events):
    topics = Topics(settings.prefix)
    feeder = Feeder(settings)
    key = uuid.uuid4().hex
    feeder.send_raw(topics.ready("high"), key.encode(), b"\x00not avro at all")
    [good] = feeder.send(ready("echo", 42, priority="high", task_id=key))  # same key: same partition, after it
    dlq = TopicReader(settings, topics.dlq)
    try:
        with running(settings):
            assert codec.loads_json(events.wait_for([good.task_id])[good.task_id][-1].result) == 42
            [msg] = wait_until(dlq.poll, message="poison message in the dlq")
            wait_until(lambda: committed(settings) == feeder.positions, message="offsets committed past the poison")
    finally:
        dlq.close()
    assert msg.value() == b"\x00not avro at all" and msg.key() == key.encode()
    headers = dict(msg.headers())
    assert headers["source-topic"] == topics.ready("high").encode()
    (partition, end), = feeder.positions.items()
    assert headers["source-partition"] == str(partition[1]).encode()
    assert headers["source-offset"] == str(end - 2).encode()
    assert b"C3 01" in headers["reason"]


def test_priority_order_with_weights(settings, events):
    reg = Registry()
    order: list[str] = []

    @reg.handler("record")
    async def record(payload, ctx):
        order.append(ctx.priority)
        await asyncio.sleep(0.01)

    feeder = Feeder(settings)
    tasks = []
    for prio in ("low", "medium", "high"):  # the backlog exists before the executor starts
        tasks += feeder.send(*(ready("record", priority=prio) for _ in range(10)))
    with running(settings, reg, concurrency=1):
        events.wait_for([t.task_id for t in tasks], timeout=20)
    assert len(order) == 30

    def mean_position(prio):
        return sum(i for i, p in enumerate(order) if p == prio) / 10

    assert mean_position("high") < mean_position("medium") < mean_position("low"), order
    assert order[:10].count("high") >= 5, order
    last_high = max(i for i, p in enumerate(order) if p == "high")
    assert order.index("low") < last_high, f"low starved until every high ran: {order}"


def test_concurrency_limit_respected(settings, events):
    reg = Registry()
    lock = threading.Lock()
    state = {"now": 0, "max": 0}

    @reg.handler("busy")
    def busy(payload, ctx):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.1)
        with lock:
            state["now"] -= 1

    feeder = Feeder(settings)
    tasks = feeder.send(*(ready("busy") for _ in range(12)))
    with running(settings, reg, concurrency=3):
        events.wait_for([t.task_id for t in tasks])
    assert state["max"] == 3


def test_long_task_reports_started_then_result(settings, events):
    fast = settings.model_copy(update={"started_event_after_s": 0.2})
    feeder = Feeder(fast)
    long_, short = feeder.send(ready("sleep", {"seconds": 0.8}), ready("sleep", {"seconds": 0}))
    with running(fast):
        got = events.wait_for([long_.task_id, short.task_id])
    assert [type(e) for e in got[long_.task_id]] == [TaskStarted, TaskSucceeded]
    started, succeeded = got[long_.task_id]
    assert started.attempt == 1 and succeeded.started_at == started.occurred_at
    assert codec.loads_json(succeeded.result) == {"slept": 0.8}
    assert [type(e) for e in got[short.task_id]] == [TaskSucceeded]


def test_timeout_cancels_async_and_abandons_sync(settings, events):
    reg = Registry()
    cancelled = threading.Event()
    release = threading.Event()

    @reg.handler("slow.async")
    async def slow_async(payload, ctx):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    @reg.handler("slow.sync")
    def slow_sync(payload, ctx):
        release.wait(10)
        return "late"

    feeder = Feeder(settings)
    a, s = feeder.send(ready("slow.async", timeout_s=0.3), ready("slow.sync", timeout_s=0.3))
    try:
        with running(settings, reg):
            got = events.wait_for([a.task_id, s.task_id])
            release.set()
    finally:
        release.set()
    for t in (a, s):
        [ev] = got[t.task_id]
        assert isinstance(ev, TaskFailed) and ev.error.startswith("TimeoutError:") and not ev.permanent
    assert cancelled.is_set()


def test_graceful_stop_finishes_in_flight_and_commits(settings, events):
    reg = Registry()
    entered = threading.Event()

    @reg.handler("slowish")
    async def slowish(payload, ctx):
        entered.set()
        await asyncio.sleep(0.7)
        return "finished"

    feeder = Feeder(settings)
    [task] = feeder.send(ready("slowish"))
    with running(settings, reg):
        assert entered.wait(JOIN_TIMEOUT)
    # The executor has stopped: the attempt that was running when stop came finished, reported, committed.
    [ev] = events.wait_for([task.task_id], timeout=5)[task.task_id]
    assert isinstance(ev, TaskSucceeded) and codec.loads_json(ev.result) == "finished"
    assert committed(settings) == feeder.positions


def test_stop_after_grace_leaves_unfinished_uncommitted(settings, events):
    quick = settings.model_copy(update={"shutdown_grace_s": 0.3})
    reg = Registry()
    stuck = threading.Event()
    seen_cancel = threading.Event()

    @reg.handler("stuck")
    def stuck_handler(payload, ctx):
        stuck.set()
        deadline = time.monotonic() + 10
        while not ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        if ctx.cancelled:
            seen_cancel.set()

    feeder = Feeder(quick)
    key = uuid.uuid4().hex
    [done] = feeder.send(ready("echo", "ok", priority="low", task_id=key))
    with running(quick, reg):
        events.wait_for([done.task_id])
        [tp] = [tp for tp in feeder.positions]
        wait_until(lambda: committed(quick).get(tp) == feeder.positions[tp], message="first offset committed")
        feeder.send(ready("stuck", priority="low", task_id=key, attempt=2))  # same partition, after it
        assert stuck.wait(JOIN_TIMEOUT)
    assert seen_cancel.wait(5)
    assert committed(quick)[tp] == feeder.positions[tp] - 1  # the stuck one will be redelivered
    assert [(type(e), e.attempt) for e in events.for_task(key)] == [(TaskSucceeded, 1)]  # nothing for attempt 2


def test_two_executors_share_the_work_across_a_rebalance(settings, events):
    feeder = Feeder(settings)
    first_wave = feeder.send(*(ready("sleep", {"seconds": 0.05}) for _ in range(30)))
    with running(settings, concurrency=2, executor_id="exec-a") as a:
        assert a.assigned_event.wait(JOIN_TIMEOUT)
        with running(settings, concurrency=2, executor_id="exec-b") as b:
            assert b.assigned_event.wait(JOIN_TIMEOUT)
            wait_until(lambda: (ours := a.consumer.assignment()) and (theirs := b.consumer.assignment())
                       and len(ours | theirs) == 9 and not ours & theirs, message="partitions split between a and b")
            second_wave = feeder.send(*(ready("sleep", {"seconds": 0.01}, priority=("high", "medium", "low")[i % 3])
                                         for i in range(45)))
            got = events.wait_for([t.task_id for t in first_wave + second_wave], timeout=20)
            wait_until(lambda: committed(settings) == feeder.positions, message="all offsets committed")
    for evs in got.values():
        assert any(isinstance(e, TaskSucceeded) for e in evs)  # at-least-once: duplicates allowed, none lost
    second_producers = {e.producer for t in second_wave for e in got[t.task_id]}
    assert second_producers == {"exec-a", "exec-b"}
