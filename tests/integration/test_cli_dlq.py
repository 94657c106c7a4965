"""`taskstream dlq list|redrive` as users run them: the console script, the real broker, records written by hand."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from taskstream.api.partitioner import partition_for
from taskstream.cli.broker import free_port
from taskstream.schemas import (
    Settings,
    TaskCreated,
    TaskDeadLettered,
    TaskFailed,
    TaskState,
    Topics,
    codec,
)
from taskstream.schemas.kafka import admin
from tests.kafka_helpers import Component, TopicReader, now, producer, send_events, stop_all

pytestmark = pytest.mark.integration


def _cli() -> list[str]:
    """The console script next to this interpreter, else the module."""
    script = shutil.which("taskstream", path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, "-m", "taskstream.cli.main"]


def env_for(bootstrap: str, prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSTREAM_")}
    return {**env, "TASKSTREAM_BOOTSTRAP_SERVERS": bootstrap, "TASKSTREAM_PREFIX": prefix}


def taskstream(settings: Settings, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*_cli(), *args], env=env_for(settings.bootstrap_servers, settings.prefix),
                          capture_output=True, text=True, timeout=timeout)


def dead_lettered(task_id: str, attempt: int, error: str = "ValueError: boom") -> TaskDeadLettered:
    return TaskDeadLettered(task_id=task_id, occurred_at=now(), producer="processor-test", attempt=attempt,
                            error=error, handler="demo.fail", priority="high")


def send_poison(settings: Settings, value: bytes, source_partition: int, source_offset: int, reason: str) -> None:
    p = producer(settings)
    p.produce(Topics(settings.prefix).dlq, value, b"poison-key", headers=[
        ("source-topic", Topics(settings.prefix).events.encode()),
        ("source-partition", str(source_partition).encode()),
        ("source-offset", str(source_offset).encode()),
        ("reason", reason.encode()),
    ])
    assert p.flush(10) == 0


def fill_dlq(settings: Settings) -> None:
    """task-a dead-lettered, a poison message, task-b, then task-a again (re-driven and failed again)."""
    dlq = Topics(settings.prefix).dlq
    send_events(settings, [dead_lettered("task-a", 3, "ValueError: boom\n  with a second line")], topic=dlq)
    send_poison(settings, b"\x00not avro at all", 2, 17, "not Avro single-object encoding (missing C3 01 marker)")
    send_events(settings, [dead_lettered("task-b", 1, "PermanentError: bad payload")], topic=dlq)
    send_events(settings, [dead_lettered("task-a", 6, "ValueError: boom again")], topic=dlq)


def redriven(settings: Settings) -> list:
    """Every record of ``<p>.events`` with its message, read up to the end offsets as of now: what the CLI
    wrote is acknowledged by then, so an empty answer means none was sent."""
    topic = Topics(settings.prefix).events
    reader = TopicReader(settings, topic)
    try:
        ends = {p: reader.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5, cached=False)[1]
                for p in range(settings.partitions)}
        reader.until(lambda ms: all(any(m.partition() == p and m.offset() >= end - 1 for m in ms)
                                    for p, end in ends.items() if end > 0), timeout=20, message=f"{topic} to {ends}")
        return [(m, codec.decode(m.value())) for m in reader.messages]
    finally:
        reader.close()


def test_list_shows_dead_lettered_tasks_and_poison_oldest_first(settings) -> None:
    fill_dlq(settings)
    r = taskstream(settings, "dlq", "list")
    assert r.returncode == 0, r.stderr
    header, *lines = r.stdout.splitlines()
    assert header.split()[:4] == ["TIME", "KIND", "TASK", "ATTEMPT"]
    assert [line.split()[1:4] for line in lines] == [
        ["dead-lettered", "task-a", "3"], ["poison", "poison-key", "-"],
        ["dead-lettered", "task-b", "1"], ["dead-lettered", "task-a", "6"],
    ]
    assert "demo.fail" in lines[0] and "high" in lines[0]
    assert "ValueError: boom with a second line" in lines[0]  # one line per record
    assert f"{settings.prefix}.events[2]@17 16 bytes: not Avro single-object encoding" in lines[1]

    # Listing writes nothing: a second list shows the same, and the topic holds the four records only.
    again = taskstream(settings, "dlq", "list")
    assert again.returncode == 0, again.stderr
    assert again.stdout == r.stdout
    dlq = Topics(settings.prefix).dlq
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "test-ends"})
    try:
        ends = [consumer.get_watermark_offsets(TopicPartition(dlq, p), timeout=5, cached=False)[1]
                for p in range(settings.partitions)]
    finally:
        consumer.close()
    assert sum(ends) == 4, ends


def test_list_json_and_limit(settings) -> None:
    fill_dlq(settings)
    r = taskstream(settings, "dlq", "list", "--json")
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["kind"], x.get("task_id")) for x in records] == [
        ("dead_lettered", "task-a"), ("poison", None), ("dead_lettered", "task-b"), ("dead_lettered", "task-a"),
    ]
    a = records[0]
    assert (a["attempt"], a["error"], a["handler"], a["priority"]) == (
        3, "ValueError: boom\n  with a second line", "demo.fail", "high")
    assert a["occurred_at"].endswith("Z")
    poison = records[1]
    assert {k: poison[k] for k in ("key", "source_topic", "source_partition", "source_offset", "size")} == {
        "key": "poison-key", "source_topic": f"{settings.prefix}.events", "source_partition": 2,
        "source_offset": 17, "size": 16}
    assert poison["reason"].startswith("not Avro")

    newest = taskstream(settings, "dlq", "list", "--json", "--limit", "2")
    assert newest.returncode == 0, newest.stderr
    assert [json.loads(line)["task_id"] for line in newest.stdout.splitlines()] == ["task-b", "task-a"]
    assert json.loads(newest.stdout.splitlines()[-1])["attempt"] == 6


def test_list_of_an_empty_dlq_prints_the_header_only(settings) -> None:
    r = taskstream(settings, "dlq", "list")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 1 and r.stdout.startswith("TIME")
    assert taskstream(settings, "dlq", "list", "--json").stdout == ""


def test_redrive_ids_appends_task_redriven_keyed_by_task_id(settings) -> None:
    ids = [f"task-{i}" for i in range(8)]
    r = taskstream(settings, "dlq", "redrive", *ids, ids[0], "--reason", "fixed the handler")
    assert r.returncode == 0, r.stderr
    assert f"sent 8 TaskRedriven event(s) to {settings.prefix}.events" in r.stdout

    sent = redriven(settings)
    assert sorted(e.task_id for _, e in sent) == sorted(ids)  # the repeated id once
    for m, e in sent:
        assert m.key() == e.task_id.encode()
        assert m.partition() == partition_for(m.key(), settings.partitions)  # murmur2, as the API
        assert e.reason == "fixed the handler" and e.producer.startswith("cli-")
        assert abs((now() - e.occurred_at).total_seconds()) < 60
        assert dict(m.headers())["event-type"] == b"TaskRedriven"


def test_redrive_all_sends_each_dead_lettered_task_once_and_skips_poison(settings) -> None:
    fill_dlq(settings)
    r = taskstream(settings, "dlq", "redrive", "--all")
    assert r.returncode == 0, r.stderr
    assert "sent 2 TaskRedriven event(s)" in r.stdout
    assert "skipped 1 poison record(s)" in r.stdout
    sent = redriven(settings)
    assert sorted(e.task_id for _, e in sent) == ["task-a", "task-b"]
    assert {e.reason for _, e in sent} == {""}


def test_redrive_all_of_an_empty_dlq_sends_nothing(settings) -> None:
    r = taskstream(settings, "dlq", "redrive", "--all")
    assert r.returncode == 0, r.stderr
    assert "sent 0 TaskRedriven event(s)" in r.stdout
    assert redriven(settings) == []


@pytest.mark.parametrize("args", [[], ["--all", "task-a"], ["--reason", "x"]])
def test_redrive_usage_errors_exit_2(settings, args) -> None:
    r = taskstream(settings, "dlq", "redrive", *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "give task ids or --all" in r.stderr
    assert redriven(settings) == []


@pytest.mark.parametrize("args", [["list"], ["redrive", "task-a"], ["redrive", "--all"]])
def test_unreachable_broker_fails_with_one_clear_line(args) -> None:
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    r = subprocess.run([*_cli(), "dlq", *args, "--timeout", "2"], env=env_for(closed, "unreachable"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert r.stderr.startswith("Error: no Kafka broker answered at " + closed), r.stderr


@pytest.mark.parametrize("args", [["list"], ["redrive", "task-a"]])
def test_missing_topic_is_reported_and_not_created(broker, args) -> None:
    prefix = f"missing{uuid.uuid4().hex[:8]}"
    missing = Settings(bootstrap_servers=broker, prefix=prefix)
    r = taskstream(missing, "dlq", *args)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr, r.stderr
    assert f"topic {prefix}.{'dlq' if args == ['list'] else 'events'} does not exist" in r.stderr
    assert not [t for t in admin(missing).list_topics(timeout=10).topics if t.startswith(prefix)]


@pytest.mark.slow
def test_a_redriven_dead_letter_runs_again_through_processor_and_executor(settings, tmp_path) -> None:
    """A task that always fails reaches `failed` and the dlq; `dlq redrive` makes attempt 2 run (and fail again)."""
    topics = Topics(settings.prefix)
    procs = [Component(settings, "processor", log_path=tmp_path / "processor.log"),
             Component(settings, "executor", log_path=tmp_path / "executor.log")]
    dlq = TopicReader(settings, topics.dlq)
    log = TopicReader(settings, topics.events, topics.state)
    try:
        # `sleep` with a negative time raises PermanentError: every attempt fails for good.
        send_events(settings, [TaskCreated(task_id="always-fails", occurred_at=now(), producer="test",
                                           handler="sleep", payload='{"seconds": -1}', max_attempts=2)])

        def dead_attempts() -> list[int]:
            return [v.attempt for v in dlq.values() if isinstance(v, TaskDeadLettered)]

        dlq.until(lambda _: dead_attempts() == [1], timeout=60, message="attempt 1 dead-lettered")
        listed = taskstream(settings, "dlq", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [(x["task_id"], x["attempt"]) for x in map(json.loads, listed.stdout.splitlines())] == [
            ("always-fails", 1)]

        r = taskstream(settings, "dlq", "redrive", "--all", "--reason", "e2e")
        assert r.returncode == 0, r.stderr
        assert "sent 1 TaskRedriven event(s)" in r.stdout

        dlq.until(lambda _: dead_attempts() == [1, 2], timeout=60, message="attempt 2 dead-lettered")
        log.until(lambda _: any(isinstance(v, TaskState) and v.attempt == 2 and v.status == "failed"
                                for v in log.values()), timeout=30, message="state: failed at attempt 2")
        failures = [v.attempt for v in log.values() if isinstance(v, TaskFailed)]
        assert failures == [1, 2], failures  # the executor ran a second attempt, after the redrive

        listed = taskstream(settings, "dlq", "list", "--json")
        assert [(x["task_id"], x["attempt"]) for x in map(json.loads, listed.stdout.splitlines())] == [
            ("always-fails", 1), ("always-fails", 2)]
    finally:
        stop_all(*procs)
        dlq.close()
        log.close()
