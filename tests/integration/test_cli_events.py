"""`taskstream events tail|replay` as users run them: the console script, the real broker, records written by hand.

Records are produced with chosen record timestamps, so ``--since`` and
``--until`` have exact answers; timestamps are not ordered within a
partition, so these tests also prove the commands filter by timestamp
themselves.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from taskstream.api.partitioner import partition_for
from taskstream.cli.broker import free_port
from taskstream.cli.dev import settings_env
from taskstream.schemas import (
    Settings,
    TaskCreated,
    TaskFailed,
    TaskQueued,
    TaskRetryScheduled,
    TaskSucceeded,
    Topics,
    codec,
)
from taskstream.schemas.kafka import admin
from tests.integration.test_dag import StateTable
from tests.kafka_helpers import Component, TopicReader, producer, stop_all

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _cli() -> list[str]:
    script = shutil.which("taskstream", path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, "-m", "taskstream.cli.main"]


def env_of(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSTREAM_")}
    return {**env, **settings_env(settings)}


def taskstream(settings: Settings, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*_cli(), *args], env=env_of(settings), capture_output=True, text=True, timeout=timeout)


def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def write(settings: Settings, items: list[tuple[object, datetime]]) -> None:
    """Each (event or raw (key, bytes), record time) to ``<p>.events``, keyed by task id, in order."""
    p = producer(settings)
    topic = Topics(settings.prefix).events
    for value, at in items:
        if isinstance(value, tuple):
            key, raw = value
            p.produce(topic, raw, key.encode(), timestamp=ms(at))
        else:
            p.produce(topic, codec.encode(value), value.task_id.encode(), headers=codec.headers(value),
                      timestamp=ms(at))
    assert p.flush(10) == 0


def history(n_tasks: int = 4) -> list[tuple[object, datetime]]:
    """Per task: created, queued, then succeeded (even) or failed + retry scheduled (odd); one record a second."""
    items = []
    for i in range(n_tasks):
        task, at = f"task-{i}", T0 + timedelta(seconds=10 * i)
        items.append((TaskCreated(task_id=task, occurred_at=at, producer="test", handler="demo.work",
                                  priority="high", max_attempts=3), at))
        items.append((TaskQueued(task_id=task, occurred_at=at + timedelta(seconds=1), producer="test", attempt=1,
                                 priority="high"), at + timedelta(seconds=1)))
        if i % 2 == 0:
            items.append((TaskSucceeded(task_id=task, occurred_at=at + timedelta(seconds=2), producer="test",
                                        attempt=1, result='{"ok": true}'), at + timedelta(seconds=2)))
        else:
            items.append((TaskFailed(task_id=task, occurred_at=at + timedelta(seconds=2), producer="test", attempt=1,
                                     error="ValueError: boom\n  second line"), at + timedelta(seconds=2)))
            items.append((TaskRetryScheduled(task_id=task, occurred_at=at + timedelta(seconds=3), producer="test",
                                             attempt=1, not_before=at + timedelta(seconds=9), delay_s=6.0,
                                             priority="high", error="ValueError: boom"), at + timedelta(seconds=3)))
    return items


def raw_log(settings: Settings, count: int) -> dict[int, list[tuple]]:
    """Per partition of ``<p>.events``: (offset, key, value, headers, timestamp) of every record (``count``
    expected)."""
    topic = Topics(settings.prefix).events
    reader = TopicReader(settings, topic)
    try:
        reader.until(lambda ms: len(ms) >= count, timeout=20, message=f"{count} records in {topic}")
        reader.read_to_end()  # and any more there are
        out: dict[int, list[tuple]] = {p: [] for p in range(settings.partitions)}
        for m in reader.messages:
            out[m.partition()].append((m.offset(), m.key(), m.value(), m.headers(), m.timestamp()[1]))
        return out
    finally:
        reader.close()


def test_tail_prints_every_event_oldest_first_and_undecodable_records(settings) -> None:
    items = history()
    items.append((("task-1", b"plain text, not avro"), T0 + timedelta(seconds=100)))
    write(settings, items)

    r = taskstream(settings, "events", "tail")
    assert r.returncode == 0, r.stderr
    header, *lines = r.stdout.splitlines()
    assert header.split() == ["TIME", "WHERE", "TYPE", "TASK", "ATTEMPT", "SUMMARY"]
    assert len(lines) == len(items)
    seen = [line.split()[2:5] for line in lines]
    assert seen[:3] == [["TaskCreated", "task-0", "-"], ["TaskQueued", "task-0", "1"], ["TaskSucceeded", "task-0", "1"]]
    assert seen[3:7] == [["TaskCreated", "task-1", "-"], ["TaskQueued", "task-1", "1"],
                         ["TaskFailed", "task-1", "1"], ["TaskRetryScheduled", "task-1", "1"]]
    times = [line.split()[0] for line in lines]
    assert times[:-1] == sorted(times[:-1]) and times[0] == "2026-01-02T03:04:05.000Z"
    failed = lines[5]
    assert "error=ValueError: boom second line" in failed  # one line per event
    assert failed.split()[1].startswith(f"{partition_for(b'task-1', settings.partitions)}@")
    assert "handler=demo.work" in lines[0] and "priority=high" in lines[0] and "max_attempts=3" in lines[0]
    assert "not_before=2026-01-02T03:04:24.000Z" in lines[6] and "delay_s=6.0" in lines[6]
    last = lines[-1].split()
    assert last[2:4] == ["?", "task-1"]
    assert "(undecodable: not Avro single-object encoding" in lines[-1]


def test_tail_json_filters_and_limit(settings) -> None:
    items = history()
    recent = datetime.now(UTC) - timedelta(seconds=30)
    items.append((TaskCreated(task_id="task-new", occurred_at=recent, producer="test", handler="demo.new",
                              run_at=recent + timedelta(hours=1)), recent))
    items.append((("task-0", b"junk"), recent + timedelta(seconds=1)))
    write(settings, items)

    r = taskstream(settings, "events", "tail", "--task", "task-1", "--json")
    assert r.returncode == 0, r.stderr
    got = [json.loads(line) for line in r.stdout.splitlines()]
    assert [g["type"] for g in got] == ["TaskCreated", "TaskQueued", "TaskFailed", "TaskRetryScheduled"]
    assert {g["partition"] for g in got} == {partition_for(b"task-1", settings.partitions)}
    assert [g["offset"] for g in got] == sorted(g["offset"] for g in got)
    failed = got[2]
    assert (failed["task_id"], failed["attempt"], failed["error"], failed["permanent"]) == (
        "task-1", 1, "ValueError: boom\n  second line", False)
    assert failed["occurred_at"] == failed["timestamp"] == "2026-01-02T03:04:17.000Z"
    assert {"event_id", "producer", "started_at"} <= failed.keys()
    assert got[3]["not_before"] == "2026-01-02T03:04:24.000Z" and got[3]["delay_s"] == 6.0

    r = taskstream(settings, "events", "tail", "--json", "--type", "taskfailed", "--type", "TaskSucceeded,TaskQueued")
    assert r.returncode == 0, r.stderr
    types = [json.loads(line)["type"] for line in r.stdout.splitlines()]
    assert sorted(types) == ["TaskFailed"] * 2 + ["TaskQueued"] * 4 + ["TaskSucceeded"] * 2

    # --since compares the record timestamp: only the two records of the last half minute.
    r = taskstream(settings, "events", "tail", "--json", "--since", "10m")
    assert r.returncode == 0, r.stderr
    got = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(g["type"], g["key"] if g["type"] is None else g["task_id"]) for g in got] == [
        ("TaskCreated", "task-new"), (None, "task-0")]
    assert got[0]["run_at"].endswith("Z") and got[1]["undecodable"].startswith("not Avro")
    r = taskstream(settings, "events", "tail", "--since", "2026-01-02T03:04:30Z")
    assert [line.split()[3] for line in r.stdout.splitlines()[1:]][:3] == ["task-3", "task-3", "task-3"]

    r = taskstream(settings, "events", "tail", "--json", "--limit", "3")
    assert [json.loads(line).get("task_id") for line in r.stdout.splitlines()] == ["task-3", "task-new", None]
    r = taskstream(settings, "events", "tail", "--json", "-n", "1", "--type", "TaskCreated")
    assert [json.loads(line)["task_id"] for line in r.stdout.splitlines()] == ["task-new"]


@pytest.mark.parametrize("args, message", [
    (["--type", "TaskExploded"], "unknown event type 'TaskExploded'"),
    (["--since", "yesterday"], "neither an RFC 3339 time"),
    (["--limit", "0"], "--limit"),
])
def test_tail_usage_errors_exit_2(settings, args, message) -> None:
    r = taskstream(settings, "events", "tail", *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr


def test_tail_follow_prints_new_events_until_interrupted(settings) -> None:
    write(settings, history(1))
    proc = subprocess.Popen([*_cli(), "events", "tail", "--follow", "--json"], env=env_of(settings),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()

    def next_line(timeout: float = 20.0) -> dict:
        return json.loads(lines.get(timeout=timeout))

    try:
        assert [next_line()["type"] for _ in range(3)] == ["TaskCreated", "TaskQueued", "TaskSucceeded"]
        later = datetime.now(UTC)
        write(settings, [(TaskCreated(task_id="late", occurred_at=later, producer="test", handler="demo.late"), later),
                         (("other", b"junk"), later)])
        got = {next_line()["type"], next_line()["type"]}
        assert got == {"TaskCreated", None}
        assert proc.poll() is None  # still following
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_replay_copies_each_partition_in_order_and_until_cuts(settings, broker) -> None:
    items = history(6)
    items.append((("task-2", b"undecodable, copied all the same"), T0 + timedelta(seconds=25, milliseconds=500)))
    write(settings, items)
    source = raw_log(settings, len(items))
    assert sum(map(len, source.values())) == len(items)

    full = Settings(**{**settings.model_dump(), "prefix": settings.prefix + "-copy"})
    r = taskstream(settings, "events", "replay", "--to-prefix", full.prefix)
    assert r.returncode == 0, r.stderr
    assert f"copied {len(items)} record(s) from {settings.prefix}.events to {full.prefix}.events" in r.stdout
    assert "records/s" in r.stdout
    copy = raw_log(full, len(items))
    strip = lambda log: {p: [rec[1:] for rec in recs] for p, recs in log.items()}  # noqa: E731
    assert strip(copy) == strip(source)  # key, value, headers and timestamp, same partition, same order
    assert {p: [rec[0] for rec in recs] for p, recs in copy.items()} == {
        p: list(range(len(recs))) for p, recs in source.items()}
    topics = admin(full).list_topics(timeout=10).topics
    assert all(f"{full.prefix}.{t}" in topics for t in ("state", "ready.high", "retry.5s", "dlq", "heartbeats"))

    # Into a log that already holds records: refused, nothing written.
    again = taskstream(settings, "events", "replay", "--to-prefix", full.prefix)
    assert again.returncode == 1
    assert f"{full.prefix}.events already holds {len(items)} record(s)" in again.stderr
    assert strip(raw_log(full, len(items))) == strip(source)

    until = T0 + timedelta(seconds=25)  # task-2's TaskSucceeded (T0+22s) is in, the junk at 25.5 s is not
    cut = Settings(**{**settings.model_dump(), "prefix": settings.prefix + "-cut"})
    r = taskstream(settings, "events", "replay", "--to-prefix", cut.prefix, "--until", "2026-01-02T03:04:30Z", "--json")
    assert r.returncode == 0, r.stderr
    figures = json.loads(r.stdout)
    expected = {p: [rec[1:] for rec in recs if rec[4] <= ms(until)] for p, recs in source.items()}
    assert figures["copied"] == sum(map(len, expected.values())) == 3 + 4 + 3  # task-0, task-1, task-2
    assert strip(raw_log(cut, figures["copied"])) == expected


def test_replay_refuses_its_own_prefix_and_a_bad_one(settings) -> None:
    r = taskstream(settings, "events", "replay", "--to-prefix", settings.prefix)
    assert r.returncode == 1 and "is the source prefix" in r.stderr
    r = taskstream(settings, "events", "replay", "--to-prefix", "no/slashes")
    assert r.returncode == 2 and "--to-prefix" in r.stderr


@pytest.mark.parametrize("args", [["tail"], ["tail", "--task", "x"], ["replay", "--to-prefix", "elsewhere"]])
def test_a_missing_events_topic_is_reported_and_nothing_is_created(broker, args) -> None:
    prefix = f"missing{uuid.uuid4().hex[:8]}"
    missing = Settings(bootstrap_servers=broker, prefix=prefix, partitions=3)
    r = taskstream(missing, "events", *args)
    assert r.returncode == 1, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    assert f"Error: topic {prefix}.events does not exist" in r.stderr
    assert "wrong TASKSTREAM_PREFIX?" in r.stderr
    assert not [
        t for t in admin(missing).list_topics(timeout=10).topics if t.startswith(prefix) or t.startswith("elsewhere.")
    ]


@pytest.mark.parametrize("args", [["tail"], ["tail", "--follow"], ["replay", "--to-prefix", "elsewhere"]])
def test_unreachable_broker_fails_with_one_clear_line(args) -> None:
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    s = Settings(bootstrap_servers=closed, prefix="unreachable")
    r = taskstream(s, "events", *args, "--timeout", "2")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert r.stderr.startswith("Error: no Kafka broker answered at " + closed), r.stderr


@pytest.mark.slow
def test_a_processor_on_the_replayed_prefix_rebuilds_the_same_states(settings, tmp_path) -> None:
    """Tasks run on prefix A (processor + executor); A's log replayed to B; a processor alone on B folds the
    same states."""
    a_states = StateTable(settings)
    procs = [Component(settings, "processor", log_path=tmp_path / "a-processor.log"),
             Component(settings, "executor", log_path=tmp_path / "a-executor.log")]
    try:
        now = datetime.now(UTC)
        write(settings, [(TaskCreated(task_id=f"run-{i}", occurred_at=now, producer="test", handler="echo",
                                      payload=json.dumps({"i": i})), now) for i in range(6)]
              + [(TaskCreated(task_id="fails", occurred_at=now, producer="test", handler="sleep",
                              payload='{"seconds": -1}'), now)])
        a_states.until(lambda s: len(s) == 7 and all(x.status in ("succeeded", "failed") for x in s.values()),
                       timeout=60, message="7 tasks finished on A", procs=procs)
    finally:
        stop_all(*procs)
        a_states.close()

    b = Settings(**{**settings.model_dump(), "prefix": settings.prefix + "-b", "data_dir": tmp_path / "b-data"})
    r = taskstream(settings, "events", "replay", "--to-prefix", b.prefix)
    assert r.returncode == 0, r.stderr
    b_states = StateTable(b)
    proc = Component(b, "processor", log_path=tmp_path / "b-processor.log")
    try:
        want = {t: (s.status, s.attempt, s.result, s.error) for t, s in a_states.states.items()}
        b_states.until(lambda s: {t: (x.status, x.attempt, x.result, x.error) for t, x in s.items()} == want,
                       timeout=60, message=f"B's states equal A's: {want}", procs=[proc])
        assert want["fails"][0] == "failed" and want["run-3"][:2] == ("succeeded", 1)
    finally:
        proc.stop()
        b_states.close()
