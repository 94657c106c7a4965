"""The processor against a real Kafka broker: fold, publish ready work, fence stale results,
route poison to the DLQ, and recover its table from ``<p>.state`` after losing its data directory."""

from __future__ import annotations

import shutil

import pytest

from taskstream.schemas import (
    ReadyTask,
    Status,
    TaskCreated,
    TaskDeadLettered,
    TaskFailed,
    TaskState,
    TaskSucceeded,
    Topics,
    codec,
)
from tests.kafka_helpers import Component, TopicReader, now, send_events

pytestmark = pytest.mark.integration


def created(i: int, **kw) -> TaskCreated:
    return TaskCreated(task_id=f"task-{i:03d}", occurred_at=now(), producer="test", handler="echo",
                       priority=("high", "medium", "low")[i % 3], payload=f'{{"i": {i}}}', **kw)


def latest_states(reader: TopicReader) -> dict[str, TaskState]:
    out = {}
    for v in reader.values():
        if isinstance(v, TaskState):
            out[v.task_id] = v
    return out


def ready_of(reader: TopicReader) -> list[ReadyTask]:
    return [v for v in reader.values() if isinstance(v, ReadyTask)]


def test_fold_ready_fencing_poison_and_recovery(settings, tmp_path):
    topics = Topics(settings.prefix)
    proc = Component(settings, "processor", log_path=tmp_path / "processor.log")
    state = TopicReader(settings, topics.state)
    ready = TopicReader(settings, *topics.all_ready)
    dlq = TopicReader(settings, topics.dlq)
    try:
        tasks = [created(i, max_attempts=2) for i in range(30)]
        send_events(settings, tasks)
        ready.until(lambda m: len(ready_of(ready)) >= 30, timeout=60, message="30 ready messages")
        first = ready_of(ready)
        assert sorted(r.task_id for r in first) == sorted(t.task_id for t in tasks)
        assert {r.attempt for r in first} == {1}
        for r in first:  # each went to its own priority's topic
            assert r.priority == next(t.priority for t in tasks if t.task_id == r.task_id)
        ready_topics = {m.topic() for m in ready.messages}
        assert ready_topics == set(topics.all_ready)

        # Outcomes: 0-9 succeed, 10-14 fail permanently, 15-29 fail once and are re-queued.
        outcomes = [TaskSucceeded(task_id=t.task_id, occurred_at=now(), producer="ex", attempt=1, result='{"ok": 1}')
                    for t in tasks[:10]]
        outcomes += [TaskFailed(task_id=t.task_id, occurred_at=now(), producer="ex", attempt=1, error="E: no",
                                permanent=True) for t in tasks[10:15]]
        outcomes += [TaskFailed(task_id=t.task_id, occurred_at=now(), producer="ex", attempt=1, error="E: again")
                     for t in tasks[15:]]
        send_events(settings, outcomes)
        # A poison message in the middle of the log does not stop the processor.
        from tests.kafka_helpers import producer
        p = producer(settings)
        p.produce(topics.events, b"not avro at all", b"task-000")
        p.flush(10)
        send_events(settings, [created(100)])

        ready.until(lambda m: len(ready_of(ready)) >= 30 + 15 + 1, timeout=60, message="retries and task 100")
        retried = [r for r in ready_of(ready) if r.attempt == 2]
        assert sorted(r.task_id for r in retried) == sorted(t.task_id for t in tasks[15:])
        # The dlq gets the poison message (raw, with where it came from) and the 5 tasks that failed for good.
        dlq.until(lambda m: len(m) >= 6, timeout=30, message="poison and dead letters in dlq")
        poison = [m for m in dlq.messages if "source-topic" in dict(m.headers() or [])]
        assert len(poison) == 1
        headers = dict(poison[0].headers())
        assert headers["source-topic"] == topics.events.encode() and poison[0].value() == b"not avro at all"
        assert b"C3 01" in headers["reason"] or b"marker" in headers["reason"]
        dead = [codec.decode(m.value()) for m in dlq.messages if m not in poison]
        assert sorted(d.task_id for d in dead) == sorted(t.task_id for t in tasks[10:15])
        assert all(isinstance(d, TaskDeadLettered) and d.error == "E: no" and d.attempt == 1 for d in dead)

        # A stale result (attempt 1 of a task now on attempt 2) changes nothing.
        send_events(settings, [TaskSucceeded(task_id=tasks[20].task_id, occurred_at=now(), producer="zombie",
                                             attempt=1, result='"stale"')])
        send_events(settings, [created(101)])  # a fence post: once 101 is folded, the stale result was too
        state.until(lambda m: "task-101" in latest_states(state), timeout=30, message="task-101 state")
        before = latest_states(state)
        assert before[tasks[20].task_id].status == Status.QUEUED and before[tasks[20].task_id].attempt == 2
        assert before[tasks[20].task_id].result is None
        assert all(before[t.task_id].status == Status.SUCCEEDED for t in tasks[:10])
        assert all(before[t.task_id].status == Status.FAILED for t in tasks[10:15])
        assert before[tasks[10].task_id].error == "E: no"

        # Restart with the data directory deleted: the table comes back from <p>.state.
        proc.kill()
        shutil.rmtree(settings.data_dir / "processor", ignore_errors=True)
        proc = Component(settings, "processor", log_path=tmp_path / "processor2.log")
        n_ready = len(ready_of(ready))
        # A duplicate TaskCreated of a known task must not queue it again (the table knows it) ...
        send_events(settings, [created(0, max_attempts=2)])
        # ... and finishing attempt 2 continues from the recovered version.
        send_events(settings, [TaskSucceeded(task_id=t.task_id, occurred_at=now(), producer="ex", attempt=2,
                                             result='{"ok": 2}') for t in tasks[15:]])
        send_events(settings, [created(102)])
        ready.until(lambda m: any(r.task_id == "task-102" for r in ready_of(ready)), timeout=90,
                    message="task-102 ready after restart")
        state.until(lambda m: all(latest_states(state)[t.task_id].status == Status.SUCCEEDED for t in tasks[15:]),
                    timeout=30, message="retried tasks succeeded")
        after = latest_states(state)
        # At least once: the uncommitted tail of the log may be folded again, re-sending the ready
        # message of a task still queued for that attempt; nothing else may be queued again.
        again = ready_of(ready)[n_ready:]
        assert "task-102" in {r.task_id for r in again}
        for r in again:
            if r.task_id != "task-102":
                was = before[r.task_id]
                assert (was.status, was.attempt) == (Status.QUEUED, r.attempt), f"re-queued {r.task_id}"
        assert "task-000" not in {r.task_id for r in again}, "the recovered table forgot a known task"
        for t in tasks[15:]:
            assert after[t.task_id].version == before[t.task_id].version + 1
            assert after[t.task_id].result == '{"ok": 2}'
        for t in tasks[:15]:
            assert after[t.task_id] == before[t.task_id]
    finally:
        proc.stop()
        for r in (state, ready, dlq):
            r.close()
