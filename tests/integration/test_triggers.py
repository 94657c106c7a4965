"""Topic triggers on the real broker (issue 29): one task per record across a SIGKILL of the trigger runner,
bad records to the dead-letter topic with the trigger's name, pause, resume and delete.

A processor folds the trigger's events into its state on ``<p>.state``; a trigger runner (``taskstream
trigger-runner``, a subprocess) reads the user's topic and writes a TaskCreated per record.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import NewTopic

from taskstream.cli.broker import KafkaBroker, free_port
from taskstream.cli.dev import settings_env
from taskstream.schemas import Settings, TaskCreated, TaskState, Topics, codec
from taskstream.schemas.kafka import admin, group_offsets, group_states
from taskstream.streams import domain
from taskstream.streams.triggers import group_of
from tests.conftest import wait_until
from tests.kafka_helpers import Component, TopicReader, now, producer, send_events, stop_all

pytestmark = [pytest.mark.integration]


def make_topic(settings, name: str, partitions: int = 3) -> str:
    client = admin(settings)
    client.create_topics([NewTopic(name, partitions, 1)])[name].result(30)
    wait_until(lambda: name in client.list_topics(timeout=5).topics, message=f"topic {name}")
    return name


def write(settings, *commands) -> None:
    """Decide each command on the state its predecessors made and write the events (as the API does)."""
    state = None
    events = []
    for c in commands:
        new = domain.decide(state, c, now())
        state = domain.fold(new, state)
        events += new
    send_events(settings, events)


def produce(settings, topic: str, values: list[tuple[bytes | None, bytes]]) -> None:
    p = producer(settings)
    for key, value in values:
        p.produce(topic, value, key)
    assert p.flush(10) == 0


class States:
    """TaskState per task and TriggerState per trigger, from ``<p>.state``."""

    def __init__(self, settings) -> None:
        self.reader = TopicReader(settings, Topics(settings.prefix).state)
        self.tasks: dict[str, TaskState] = {}
        self.triggers: dict = {}

    def poll(self) -> States:
        for m in self.reader.poll(0.05):
            if not m.value():
                continue
            s = codec.decode(m.value())
            if isinstance(s, TaskState):
                self.tasks[s.task_id] = s
            elif type(s).__name__ == "TriggerState":
                self.triggers[s.name] = s
        return self

    def close(self) -> None:
        self.reader.close()


def create(name: str, topic: str, **fields) -> domain.CreateTrigger:
    return domain.CreateTrigger(name=name, producer="test", topic=topic, template='{"handler": "noop"}',
                                actor="key-test", **fields)


def group_empty(settings, name: str) -> bool:
    got = group_states(admin(settings), [group_of(settings, name)], 5).get(group_of(settings, name))
    return got is not None and got[1] == 0


def test_one_task_per_record_across_a_sigkill_of_the_runner(settings, tmp_path):
    topic = make_topic(settings, f"{settings.prefix}-orders")
    proc = Component(settings, "processor", log_path=tmp_path / "processor.log")
    runner = Component(settings, "trigger-runner", log_path=tmp_path / "runner-1.log")
    states = States(settings)
    events = TopicReader(settings, Topics(settings.prefix).events)
    sent: list[tuple[int, int]] = []
    try:
        write(settings, create("orders", topic, start='"earliest"'))
        # 200 records, keyed so they spread over the partitions, produced over ~2 s while the runner works.
        p = producer(settings)
        delivered: list = []

        def feed() -> None:
            for i in range(200):
                p.produce(topic, codec.dumps_json({"n": i}).encode(), f"k{i}".encode(),
                          on_delivery=lambda err, m: delivered.append(m) if err is None else None)
                p.poll(0)
                time.sleep(0.02)  # a stream, not a burst: the kill lands while records arrive
            assert p.flush(10) == 0

        wait_until(lambda: not group_empty(settings, "orders") and group_states(
            admin(settings), [group_of(settings, "orders")], 5)[group_of(settings, "orders")][0] == "stable",
            timeout=60, message="the runner consuming")
        feeder = threading.Thread(target=feed)
        feeder.start()
        wait_until(lambda: len(states.poll().tasks) >= 40, timeout=60, message="40 tasks before the kill")
        runner.signal(signal.SIGKILL)
        runner.proc.wait()
        feeder.join(30)
        sent = sorted((m.partition(), m.offset()) for m in delivered)
        assert len(sent) == 200
        # The worst crash: nothing was committed. Once the killed member's session ended, the group is rewound
        # to the start, so the new runner reads every record again, the ones whose task was written too.
        wait_until(lambda: group_empty(settings, "orders"), timeout=30, message="the killed member gone")
        rewind = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": group_of(settings, "orders"),
                           "enable.auto.commit": False})
        rewind.commit(offsets=[TopicPartition(topic, q, 0) for q in range(3)], asynchronous=False)
        rewind.close()
        written_before = len(states.poll().tasks)
        runner = Component(settings, "trigger-runner", log_path=tmp_path / "runner-2.log")
        wait_until(lambda: len(states.poll().tasks) >= 200, timeout=60, message="200 tasks")
        # Every record's task, and nothing else: the id is the record's, and the labels say where it came from.
        expected = {domain.trigger_task_id("orders", topic, part, off): (part, off) for part, off in sent}
        assert set(states.tasks) == set(expected)
        for task_id, s in states.tasks.items():
            part, off = expected[task_id]
            assert (s.labels["kafka.topic"], s.labels["kafka.partition"], s.labels["kafka.offset"]) == (
                topic, str(part), str(off))
            assert s.labels["taskstream.trigger"] == "orders" and s.version >= 1
        # The restarted runner committed every record: its group has no lag left.
        client = admin(settings)
        committed = group_offsets(client, group_of(settings, "orders"), [(topic, q) for q in range(3)], 10)
        ends = {q: 1 + max([o for pp, o in sent if pp == q], default=-1) for q in range(3)}
        wait_until(lambda: group_offsets(client, group_of(settings, "orders"), [(topic, q) for q in range(3)], 10)
                   == {(topic, q): e for q, e in ends.items() if e > 0}, timeout=20, message=f"commits {committed}")
        created = [e for e in events.read_to_end() for e in [codec.decode(e.value())] if isinstance(e, TaskCreated)]
        assert {e.task_id for e in created} == set(expected)
        assert len(created) >= 200 + written_before  # read again, written again, folded once
        print(f"\n200 records, 200 tasks; TaskCreated written {len(created)} times "
              f"({len(created) - 200} duplicates re-written after the SIGKILL and rewind, dropped by the fold)")
    finally:
        stop_all(runner, proc)
        states.close()
        events.close()


def test_bad_records_dead_letter_and_pause_resume_delete(settings, tmp_path):
    topic = make_topic(settings, f"{settings.prefix}-shop", partitions=1)
    proc = Component(settings, "processor", log_path=tmp_path / "processor.log")
    runner = Component(settings, "trigger-runner", log_path=tmp_path / "runner.log")
    states = States(settings)
    dlq = TopicReader(settings, Topics(settings.prefix).dlq)
    try:
        write(settings, create("shop", topic, filter='{"type": "order"}'))
        wait_until(lambda: "shop" in states.poll().triggers, timeout=20, message="the trigger's state")
        # A record after the trigger's creation (start "latest"): only the orders become tasks.
        produce(settings, topic, [(b"a", b'{"type": "order", "id": 1}'), (b"b", b"not json"),
                                  (b"c", b'{"type": "refund"}'), (b"d", b"[1, 2]"),
                                  (b"e", b'{"type": "order", "id": 2}')])
        ids = {domain.trigger_task_id("shop", topic, 0, o) for o in (0, 4)}
        wait_until(lambda: ids <= set(states.poll().tasks), timeout=30, message="the two orders' tasks")
        letters = dlq.until(lambda ms: len(ms) >= 2 and ms, timeout=20, message="two dead letters")
        for m, offset in zip(sorted(letters, key=lambda m: m.key()), (1, 3), strict=True):
            h = dict(m.headers())
            assert h["trigger"] == b"shop" and h["source-topic"] == topic.encode()
            assert h["source-offset"] == str(offset).encode() and b"trigger shop" in h["reason"]
        assert {codec.loads_json(s.payload)["id"] for s in states.tasks.values()} == {1, 2}

        # Paused: the runner leaves the group; a record meanwhile waits and becomes a task after the resume.
        send_events(settings, domain.decide(states.triggers["shop"], domain.PauseTrigger(name="shop", producer="test"),
                                            now()))
        wait_until(lambda: states.poll().triggers["shop"].status == "paused", timeout=20, message="paused")
        wait_until(lambda: group_empty(settings, "shop"), timeout=30, message="the trigger's group empty")
        produce(settings, topic, [(b"f", b'{"type": "order", "id": 3}')])
        time.sleep(1.0)  # nothing to await: the point is that nothing happens while paused
        assert domain.trigger_task_id("shop", topic, 0, 5) not in states.poll().tasks
        paused_state = states.triggers["shop"]
        send_events(settings, domain.decide(paused_state, domain.ResumeTrigger(name="shop", producer="test"), now()))
        wait_until(lambda: domain.trigger_task_id("shop", topic, 0, 5) in states.poll().tasks, timeout=30,
                   message="the task of the record written while paused")

        # Deleted: stopped for good.
        active = states.poll().triggers["shop"]
        send_events(settings, domain.decide(active, domain.DeleteTrigger(name="shop", producer="test"),
                                            now() + timedelta(seconds=1)))
        wait_until(lambda: states.poll().triggers["shop"].status == "deleted", timeout=20, message="deleted")
        wait_until(lambda: group_empty(settings, "shop"), timeout=30, message="the trigger's group empty")
        produce(settings, topic, [(b"g", b'{"type": "order", "id": 4}')])
        time.sleep(1.0)
        assert domain.trigger_task_id("shop", topic, 0, 6) not in states.poll().tasks
        assert runner.proc.poll() is None and proc.proc.poll() is None
    finally:
        stop_all(runner, proc)
        states.close()
        dlq.close()
    # The log folds again to what the processor published, trigger states included.
    r = subprocess.run([sys.executable, "-m", "taskstream.cli.main", "state", "rebuild", "--verify"],
                       env={**os.environ, **settings_env(settings)}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_trigger_reads_a_topic_of_another_cluster(settings, tmp_path):
    """A trigger naming ``bootstrap_servers`` consumes there; its tasks are written to the stack's own cluster."""
    other = KafkaBroker(free_port(), tmp_path / "other-kafka").start(timeout=120)
    proc = runner = None
    states = States(settings)
    try:
        theirs = Settings(bootstrap_servers=other.bootstrap_servers, prefix=settings.prefix, partitions=1)
        topic = make_topic(theirs, f"{settings.prefix}-theirs", partitions=1)
        proc = Component(settings, "processor", log_path=tmp_path / "processor.log")
        runner = Component(settings, "trigger-runner", log_path=tmp_path / "runner.log")
        write(settings, create("theirs", topic, start='"earliest"', bootstrap_servers=other.bootstrap_servers))
        produce(theirs, topic, [(b"a", b'{"n": 1}'), (b"b", b'{"n": 2}')])
        ids = {domain.trigger_task_id("theirs", topic, 0, o) for o in (0, 1)}
        wait_until(lambda: ids <= set(states.poll().tasks), timeout=60, message="the other cluster's records' tasks")
        assert {codec.loads_json(states.tasks[i].payload)["n"] for i in ids} == {1, 2}
        assert topic not in admin(settings).list_topics(timeout=5).topics  # the topic is only on the other cluster
        # the runner's group, and its commits, live where the topic is
        wait_until(lambda: group_offsets(admin(theirs), group_of(settings, "theirs"), [(topic, 0)], 10)
                   == {(topic, 0): 2}, timeout=20, message="the group's commit on the other cluster")
    finally:
        stop_all(runner, proc)
        states.close()
        other.stop()
