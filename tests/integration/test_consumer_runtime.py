"""The consumer runtime (schemas/consumer.py) against the real broker: commits only what is done, commits a revoked
partition before its next owner reads it, resumes a paused partition it lost, dead-letters a poison record with its
headers and goes on, and leaves its group when it stops."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest

from taskstream.schemas import Settings, Topics, TopicSpec
from taskstream.schemas.consumer import BEGINNING, ConsumerRuntime, Hooks, TailReader
from taskstream.schemas.kafka import admin, describe_groups, ensure_topics, group_offsets
from tests.conftest import SESSION_TIMEOUT_MS, wait_until
from tests.kafka_helpers import TopicReader, producer


class Recorder(Hooks):
    """Keeps what it is given; ``b"poison"`` goes to the dead-letter topic; ``hold`` keeps offsets for the test to
    mark done (with ``done_on_return=False``)."""

    def __init__(self, name: str = "member") -> None:
        self.name = name
        self.values: list[tuple[int, int, bytes]] = []
        self.assigned: list[list] = []
        self.revoked: list[list] = []
        self.lost: list[list] = []
        self.stopped = threading.Event()
        self.on_first_batch = None

    def on_assigned(self, runtime, partitions):
        self.assigned.append(sorted(partitions))

    def on_batch(self, runtime, records):
        if self.on_first_batch is not None:
            first, self.on_first_batch = self.on_first_batch, None
            first(runtime, records)
        for m in records:
            if m.value() == b"poison":
                runtime.dead_letter(m, "not a record we know")
            else:
                self.values.append((m.partition(), m.offset(), m.value()))

    def on_revoked(self, runtime, partitions):
        self.revoked.append(sorted(partitions))

    def on_lost(self, runtime, partitions):
        self.lost.append(sorted(partitions))

    def on_stopped(self, runtime):
        self.stopped.set()


@pytest.fixture
def topic(settings: Settings) -> str:
    name = f"{settings.prefix}.runtime"
    assert ensure_topics(settings, [TopicSpec(name, 2, {})]) == []
    return name


def produce(settings: Settings, topic: str, records: list[tuple[int, bytes]]) -> None:
    p = producer(settings)
    for partition, value in records:
        p.produce(topic, value, b"k", partition=partition)
    assert p.flush(10) == 0


def committed(settings: Settings, group: str, topic: str) -> dict[int, int]:
    got = group_offsets(admin(settings), group, [(topic, 0), (topic, 1)], 5)
    return {p: o for (_, p), o in got.items()}


@contextmanager
def running(runtime: ConsumerRuntime):
    stop = threading.Event()
    errors: list[BaseException] = []

    def run():
        try:
            runtime.run(stop)
        except BaseException as exc:  # the test reads it
            errors.append(exc)

    thread = threading.Thread(target=run, name=runtime.client_id, daemon=True)
    thread.start()
    try:
        yield errors
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), f"{runtime.client_id} did not stop"


def member(settings: Settings, hooks: Hooks, topic: str, name: str = "m1", **options) -> ConsumerRuntime:
    return ConsumerRuntime.member(settings, hooks, client_id=name, group=f"{settings.prefix}-runtime",
                                  topics=[topic], **options)


def test_a_poison_record_is_dead_lettered_with_its_headers_and_the_consumer_goes_on(settings, topic) -> None:
    produce(settings, topic, [(0, b"a"), (0, b"poison"), (0, b"b"), (1, b"c")])
    hooks = Recorder()
    dlq = TopicReader(settings, Topics(settings.prefix).dlq)
    try:
        with running(member(settings, hooks, topic)) as errors:
            wait_until(lambda: len(hooks.values) == 3, message="the three good records")
            [letter] = dlq.until(lambda msgs: msgs, message="the dead letter")
            # Done on return, and the poison record once its letter was acknowledged: every offset is committed.
            wait_until(lambda: committed(settings, f"{settings.prefix}-runtime", topic) == {0: 3, 1: 1},
                       message="offsets past the poison record committed")
            produce(settings, topic, [(0, b"d")])
            wait_until(lambda: (0, 3, b"d") in hooks.values, message="a record after the poison one")
        assert errors == []
    finally:
        dlq.close()
    assert sorted(v for _, _, v in hooks.values) == [b"a", b"b", b"c", b"d"]
    assert letter.value() == b"poison" and letter.key() == b"k"
    assert dict(letter.headers()) == {"source-topic": topic.encode(), "source-partition": b"0",
                                      "source-offset": b"1", "reason": b"not a record we know"}


def test_only_offsets_marked_done_are_committed(settings, topic) -> None:
    """A loop that finishes records later (``done_on_return=False``) commits up to the first one not done yet."""
    produce(settings, topic, [(0, b"r0"), (0, b"r1"), (0, b"r2"), (0, b"r3")])
    hooks = Recorder()
    runtime = member(settings, hooks, topic, commit_interval_s=0.05, done_on_return=False)
    group = f"{settings.prefix}-runtime"
    with running(runtime) as errors:
        wait_until(lambda: len(hooks.values) == 4, message="four records")
        for offset in (0, 1, 3):
            runtime.done((topic, 0), offset)
        wait_until(lambda: committed(settings, group, topic).get(0) == 2, message="offset 2 committed")
        assert committed(settings, group, topic).get(0) == 2  # not past offset 2, which is not done
        runtime.done((topic, 0), 2)
        wait_until(lambda: committed(settings, group, topic).get(0) == 4, message="offset 4 committed")
    assert errors == []


def test_a_batch_whose_hook_raised_is_not_committed_and_is_read_again(settings, topic) -> None:
    produce(settings, topic, [(0, b"x"), (1, b"y")])
    broken = Recorder("broken")

    def fail(runtime, records):
        raise RuntimeError("a loop's bug")

    broken.on_first_batch = fail
    with running(member(settings, broken, topic)) as errors:
        wait_until(lambda: errors, message="run ending with the hook's error")
    assert isinstance(errors[0], RuntimeError) and broken.stopped.is_set()
    assert committed(settings, f"{settings.prefix}-runtime", topic) == {}
    again = Recorder("again")
    with running(member(settings, again, topic, name="m2")):
        wait_until(lambda: len(again.values) == 2, message="the batch read again")


def test_a_revoked_partition_is_committed_before_its_next_owner_reads_it(settings, topic) -> None:
    """No periodic commit: only the revocation commits, so the second member reads nothing the first one did."""
    produce(settings, topic, [(0, b"a0"), (0, b"a1"), (1, b"b0"), (1, b"b1")])
    first, second = Recorder("first"), Recorder("second")
    with running(member(settings, first, topic, name="m1", commit_interval_s=3600)) as errors1:
        wait_until(lambda: len(first.values) == 4, message="the first member reads all four")
        with running(member(settings, second, topic, name="m2", commit_interval_s=3600)) as errors2:
            wait_until(lambda: first.revoked and any(second.assigned), timeout=30,
                       message="a partition moved to the second member")
            [[moved]] = first.revoked
            assert second.assigned[-1] == [moved]
            produce(settings, topic, [(moved[1], b"after")])
            wait_until(lambda: (moved[1], 2, b"after") in second.values, message="the record after the move")
            assert second.values == [(moved[1], 2, b"after")]  # nothing the first member had done is read again
    assert errors1 == [] and errors2 == []
    assert first.lost == [] and second.lost == []


def test_a_lost_partition_is_resumed_and_read_when_it_comes_back(settings, topic) -> None:
    """A member paused a partition, then its session ended (a hook held the thread past max.poll.interval.ms): the
    partitions are lost, not revoked; when the group gives them back the paused one is read again."""
    max_poll_ms = SESSION_TIMEOUT_MS + 500  # librdkafka's floor is session.timeout.ms
    produce(settings, topic, [(0, b"first")])
    hooks = Recorder()
    blocked = threading.Event()

    def pause_and_hold(runtime, records):
        runtime.pause([(topic, 0), (topic, 1)])
        blocked.wait(2 * max_poll_ms / 1000)  # a loop stuck past max.poll.interval.ms: librdkafka leaves the group

    hooks.on_first_batch = pause_and_hold
    runtime = member(settings, hooks, topic, overrides={"max.poll.interval.ms": max_poll_ms})
    with running(runtime) as errors:
        wait_until(lambda: hooks.lost, timeout=30, message="the partitions lost")
        assert hooks.revoked == []  # lost, not revoked: nothing of them was committed on the way out
        wait_until(lambda: len(hooks.assigned) >= 2 and hooks.assigned[-1], timeout=30,
                   message="the partitions given back")
        assert runtime.paused == set()
        produce(settings, topic, [(0, b"again"), (1, b"other")])
        wait_until(lambda: {b"again", b"other"} <= {v for _, _, v in hooks.values}, timeout=30,
                   message="records of the partitions paused before they were lost")
    assert errors == []
    assert hooks.lost[0] == [(topic, 0), (topic, 1)]


def test_stopping_leaves_the_group_at_once(settings, topic) -> None:
    """The member leaves (LeaveGroup), so the group is empty long before its session (30 s here) would expire."""
    hooks = Recorder()
    group = f"{settings.prefix}-runtime"
    runtime = member(settings, hooks, topic, overrides={"session.timeout.ms": 30_000, "heartbeat.interval.ms": 3000})
    with running(runtime):
        wait_until(lambda: hooks.assigned and hooks.assigned[-1], timeout=30, message="partitions assigned")
        assert describe_groups(admin(settings), [group], 5)[group]["members"]
    assert hooks.stopped.is_set() and hooks.revoked  # leaving revokes what the member held
    wait_until(lambda: describe_groups(admin(settings), [group], 5)[group]["members"] == [], timeout=10,
               message="the group without members")




class Started:
    """A runtime running on a thread of its own until ``stop()`` (``running`` for a test that stops members in an
    order of its own)."""

    def __init__(self, runtime: ConsumerRuntime) -> None:
        self.runtime = runtime
        self._running = running(runtime)
        self.errors = self._running.__enter__()

    def stop(self) -> None:
        self._running.__exit__(None, None, None)


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_a_member_fenced_or_refused_for_its_instance_id_rejoins_once_the_other_leaves(settings, topic, protocol,
                                                                                      caplog) -> None:
    """Two members with one static ``group.instance.id``: under the classic protocol the second fences the first
    (a fatal FENCED_INSTANCE_ID), under the consumer protocol the second is refused (a fatal
    UNRELEASED_INSTANCE_ID). Either way the one left without the id loses what it held, rebuilds its consumer
    and waits; once the other has left and its session ended, it joins and reads what comes next. Nothing ends
    ``run`` with an error."""
    settings = settings.model_copy(update={"group_protocol": protocol})
    static = {"group.instance.id": "the-one"}
    produce(settings, topic, [(0, b"a"), (1, b"b")])
    first, second = Recorder("first"), Recorder("second")
    members = [Started(member(settings, first, topic, name="first", overrides=static))]
    try:
        wait_until(lambda: len(first.values) == 2, timeout=30, message="the first member reads")
        members.append(Started(member(settings, second, topic, name="second", overrides=static)))
        holder, waiting = (members[1], members[0]) if protocol == "classic" else (members[0], members[1])
        wait_until(lambda: "instance id the-one is held by another member" in caplog.text, timeout=30,
                   message="a member left without the id, waiting for it")
        if protocol == "classic":
            assert first.lost == [sorted([(topic, 0), (topic, 1)])]  # fenced: what it held was lost, not committed
        holder.stop()  # a static member's id is free once its session ends (2 s in the tests)
        produce(settings, topic, [(0, b"c"), (1, b"d")])

        def read_again() -> bool:
            assert waiting.errors == []
            return {b"c", b"d"} <= {v for _, _, v in waiting.runtime.hooks.values}

        wait_until(read_again, timeout=60, message="the member that waited reads again")
        assert waiting.runtime.rebuilds == 1
    finally:
        for m in members:
            m.stop()
    assert [m.errors for m in members] == [[], []]

class Follower(Hooks):
    """A reader of every partition of ``topic`` from the beginning, as the read model and the key store are."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.failures: list[str] = []
        self.connects = 0
        self.values: list[bytes] = []
        self.ends: dict[int, int] = {}

    def on_connect(self, runtime):
        self.connects += 1
        runtime.assign({(self.topic, p): BEGINNING for p in runtime.partitions(self.topic, 5)})

    def on_failure(self, runtime, exc):
        self.failures.append(str(exc))
        return True

    def on_batch(self, runtime, records):
        self.values += [m.value() for m in records]

    def on_end(self, runtime, partition, offset):
        self.ends[partition[1]] = offset


def test_a_reader_that_failed_connects_again_and_reads_from_the_beginning(settings) -> None:
    name = f"{settings.prefix}.later"
    hooks = Follower(name)
    runtime = ConsumerRuntime.reader(settings, hooks, client_id="follower", overrides={"enable.partition.eof": True})
    with running(runtime):
        wait_until(lambda: hooks.failures, message="a failure: the topic does not exist yet")
        assert "does not exist" in hooks.failures[0]
        assert ensure_topics(settings, [TopicSpec(name, 2, {})]) == []
        produce(settings, name, [(0, b"one"), (1, b"two"), (0, b"three")])
        wait_until(lambda: sorted(hooks.values) == [b"one", b"three", b"two"] and hooks.ends == {0: 2, 1: 1},
                   timeout=30, message="every record read, each partition to its end")
    assert hooks.connects >= 2


def test_a_tail_reader_takes_every_record_appended_after_add_returns(settings, topic) -> None:
    """The end is asked of the broker inside ``add``: a record produced right after it is taken, one produced
    before it is not (the processor follows heartbeats this way; a lazily resolved end skipped them)."""
    produce(settings, topic, [(0, b"before"), (1, b"before")])
    p = producer(settings)
    p.list_topics(topic, timeout=10)  # connected before add: the records follow it by microseconds
    tail = TailReader(settings, f"{settings.prefix}-tail", topic)
    try:
        tail.add([0, 1])
        for partition in (0, 1):
            p.produce(topic, f"after-{partition}".encode(), b"k", partition=partition)
        assert p.flush(10) == 0
        taken: list[bytes] = []

        def took_both() -> bool:
            taken.extend(m.value() for m in tail.take(10, timeout=0.2))
            return len(taken) >= 2

        wait_until(took_both, timeout=20, message="both records appended after add")
        assert sorted(taken) == [b"after-0", b"after-1"]
    finally:
        tail.close()
