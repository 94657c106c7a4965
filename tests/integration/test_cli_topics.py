"""`taskstream topics list|create|describe` and `taskstream lag` through the console script, on the real broker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import NewTopic

from taskstream.cli.broker import free_port
from taskstream.cli.dev import settings_env
from taskstream.schemas import Settings, TaskCreated, TaskState, TopicMismatch, Topics, catalogue, codec
from taskstream.schemas.kafka import admin, ensure_topics, require_topics
from taskstream.schemas.limits import MAX_RECORD_BYTES
from taskstream.schemas.topics import DAY_MS
from tests.conftest import wait_until
from tests.kafka_helpers import Component, now, producer

pytestmark = pytest.mark.integration


def _cli() -> list[str]:
    script = shutil.which("taskstream", path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, "-m", "taskstream.cli.main"]


def taskstream(settings: Settings, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSTREAM_")}
    return subprocess.run([*_cli(), *args], env={**env, **settings_env(settings)}, capture_output=True, text=True,
                          timeout=timeout)


def json_lines(r: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in r.stdout.splitlines()]


def fresh(broker: str) -> Settings:
    """Settings of a prefix whose topics do not exist yet."""
    return Settings(bootstrap_servers=broker, prefix=f"tp{uuid.uuid4().hex[:8]}", partitions=3)


def fill(settings: Settings, topic: str, per_partition: dict[int, int]) -> None:
    p = producer(settings)
    for partition, n in per_partition.items():
        for i in range(n):
            p.produce(topic, b"x", f"k{i}".encode(), partition=partition)
    assert p.flush(10) == 0


def test_list_shows_the_catalogue_as_it_is(settings) -> None:
    r = taskstream(settings, "topics", "list")
    assert r.returncode == 0, r.stderr
    header, *lines = r.stdout.splitlines()
    assert header.split() == ["TOPIC", "PARTITIONS", "CLEANUP.POLICY", "RETENTION.MS", "STATUS"]
    assert [line.split()[0] for line in lines] == [s.name for s in catalogue(settings)]
    rows = {line.split()[0]: line.split()[1:] for line in lines}
    assert rows[f"{settings.prefix}.events"] == ["3", "delete", "-1", "ok"]
    assert rows[f"{settings.prefix}.state"][:2] == ["3", "compact"] and rows[f"{settings.prefix}.state"][-1] == "ok"
    assert rows[f"{settings.prefix}.dlq"] == ["3", "delete", str(90 * 24 * 3600 * 1000), "ok"]


def test_create_reports_wrong_partitions_and_configs_and_list_shows_them(broker) -> None:
    s = fresh(broker)
    t = Topics(s.prefix)
    client = admin(s)
    big = {"max.message.bytes": str(MAX_RECORD_BYTES)}
    for fut in client.create_topics([
        NewTopic(t.state, 2, 1, config={"cleanup.policy": "delete", **big}),  # wrong count and policy
        NewTopic(t.dlq, 3, 1, config={"cleanup.policy": "delete", "retention.ms": "60000", **big}),  # retention
        NewTopic(t.ready("high"), 3, 1, config={"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)}),
        NewTopic(f"{s.prefix}.ready.urgent", 1, 1),  # not ours
    ]).values():
        fut.result(10)
    wait_until(lambda: t.state in admin(s).list_topics(timeout=5).topics, message="hand-made topics")

    listed = json_lines(taskstream(s, "topics", "list", "--json"))
    by_name = {x["topic"]: x for x in listed}
    assert by_name[t.events]["exists"] is False
    assert by_name[t.state]["problems"] == [f"topic {t.state} has 2 partitions, expected 3",
                                            f"topic {t.state} has cleanup.policy=delete, expected compact"]
    assert by_name[t.dlq]["problems"] == [f"topic {t.dlq} has retention.ms=60000, expected {90 * DAY_MS}"]
    assert by_name[t.dlq]["differences"] == [f"retention.ms 60000 (expected {90 * DAY_MS})"]
    # the broker's default record limit (1 MiB) refuses records taskstream writes
    assert by_name[t.ready("high")]["problems"] == [
        f"topic {t.ready('high')} has max.message.bytes=1048588, expected {MAX_RECORD_BYTES}"]
    assert by_name[f"{s.prefix}.ready.urgent"] == {"topic": f"{s.prefix}.ready.urgent", "exists": True,
                                                   "in_catalogue": False}

    r = taskstream(s, "topics", "create")
    assert r.returncode == 1, r.stderr
    assert f"problem: topic {t.state} has 2 partitions, expected 3" in r.stderr
    assert f"problem: topic {t.state} has cleanup.policy=delete, expected compact" in r.stderr
    assert f"problem: topic {t.dlq} has retention.ms=60000, expected {90 * DAY_MS}" in r.stderr
    assert f"problem: topic {t.ready('high')} has max.message.bytes=1048588" in r.stderr
    assert "Traceback" not in r.stderr
    topics = admin(s).list_topics(timeout=10).topics
    assert all(spec.name in topics for spec in catalogue(s))  # the missing ones were created
    assert len(topics[t.state].partitions) == 2  # the wrong one left alone

    r = taskstream(s, "topics", "list")
    assert r.returncode == 0, r.stderr
    status = {line.split()[0]: line.split(None, 4)[4] for line in r.stdout.splitlines()[1:]}
    assert status[t.events] == "ok"
    assert status[t.state] == "differs: partitions 2 (expected 3); cleanup.policy delete (expected compact)"
    assert [line for line in r.stdout.splitlines() if line.startswith(f"{s.prefix}.ready.urgent ")][0].endswith(
        "  not in the catalogue")


def test_describe_shows_config_and_offsets_per_partition(settings) -> None:
    t = Topics(settings.prefix)
    fill(settings, t.events, {0: 5, 2: 2})
    r = taskstream(settings, "topics", "describe", "events", t.ready("high"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"{t.events}  partitions=3  cleanup.policy=delete  retention.ms=-1  records=7  (ok)"
    assert [line.split() for line in lines[1:5]] == [
        ["PARTITION", "LOW", "HIGH", "RECORDS"], ["0", "0", "5", "5"], ["1", "0", "0", "0"], ["2", "0", "2", "2"]]
    assert lines[5].startswith(f"{t.ready('high')}  partitions=3  cleanup.policy=delete  retention.ms=604800000")

    described = json_lines(taskstream(settings, "topics", "describe", "--json"))
    assert [d["topic"] for d in described] == [s.name for s in catalogue(settings)]
    assert described[0]["offsets"] == [{"partition": 0, "low": 0, "high": 5, "records": 5},
                                       {"partition": 1, "low": 0, "high": 0, "records": 0},
                                       {"partition": 2, "low": 0, "high": 2, "records": 2}]

    r = taskstream(settings, "topics", "describe", "nosuch")
    assert r.returncode == 1 and f"Error: topic {settings.prefix}.nosuch does not exist" in r.stderr


def test_lag_per_group_and_partition_from_committed_and_end_offsets(settings) -> None:
    t = Topics(settings.prefix)
    fill(settings, t.events, {0: 5, 1: 3})
    fill(settings, t.ready("low"), {2: 4})
    fill(settings, t.retry("1m"), {1: 1})
    # The processor group committed 2 of partition 0 and all of partition 1 (done here by hand, without joining).
    c = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": t.processor_group,
                  "enable.auto.commit": False})
    c.commit(offsets=[TopicPartition(t.events, 0, 2), TopicPartition(t.events, 1, 3)], asynchronous=False)
    c.close()

    r = taskstream(settings, "lag", "--json")
    assert r.returncode == 0, r.stderr
    rows = json_lines(r)
    got = {(x["group"], x["topic"], x["partition"]): (x["committed"], x["end"], x["lag"]) for x in rows if x["group"]}
    assert len(got) == 3 * 1 + 3 * 3 + 3 * 5
    assert [got[(t.processor_group, t.events, p)] for p in range(3)] == [(2, 5, 3), (3, 3, 0), (None, 0, 0)]
    assert got[(t.executor_group, t.ready("low"), 2)] == (None, 4, 4)  # nothing committed: all of it
    assert got[(t.relay_group, t.retry("1m"), 1)] == (None, 1, 1)
    assert sum(v[2] for k, v in got.items() if k[0] == t.executor_group) == 4
    read_model = rows[-1]
    assert read_model["role"] == "read model" and read_model["lag"] is None and read_model["topic"] == t.state
    assert "cannot be known from outside" in read_model["note"]

    r = taskstream(settings, "lag")
    assert r.returncode == 0, r.stderr
    assert f"{t.processor_group} (processor): empty, lag 3" in r.stdout
    assert f"{t.executor_group} (executors): dead, lag 4" in r.stdout, r.stdout  # no member ever joined
    assert "read model" in r.stdout.splitlines()[-1]


def test_lag_of_a_running_processor_drops_to_zero(settings, tmp_path) -> None:
    t = Topics(settings.prefix)
    proc = Component(settings, "processor", log_path=tmp_path / "processor.log")
    try:
        p = producer(settings)
        for i in range(30):
            e = TaskCreated(task_id=f"lag-{i}", occurred_at=now(), producer="test", handler="noop")
            p.produce(t.events, codec.encode(e), e.task_id.encode(), headers=codec.headers(e))
        assert p.flush(10) == 0

        def processor_rows():
            r = taskstream(settings, "lag", "--json")
            assert r.returncode == 0, r.stderr
            rows = [x for x in json_lines(r) if x["group"] == t.processor_group]
            return rows if all(x["lag"] == 0 and x["committed"] is not None for x in rows) and \
                sum(x["end"] for x in rows) >= 30 + 30 else None  # TaskCreated + the TaskQueued it appends

        rows = wait_until(processor_rows, timeout=60, interval=0.5, message="processor lag 0")
        assert all(x["committed"] == x["end"] for x in rows)
        assert all(x["group_state"] == "stable" for x in rows)
        executors = [x for x in json_lines(taskstream(settings, "lag", "--json")) if x["group"] == t.executor_group]
        # 30 ready messages, no executor running
        assert sum(x["lag"] for x in executors) == 30
    finally:
        proc.stop()


@pytest.mark.parametrize("args", [["topics", "list"], ["topics", "describe"], ["lag"]])
def test_a_bad_prefix_is_reported(broker, args) -> None:
    s = fresh(broker)
    r = taskstream(s, *args)
    assert r.returncode == 1, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and s.prefix in errors[0] and "wrong TASKSTREAM_PREFIX?" in errors[0], r.stderr
    assert not [n for n in admin(s).list_topics(timeout=10).topics if n.startswith(s.prefix)]


def test_lag_asks_the_api_for_its_read_model_lag(settings, tmp_path) -> None:
    t = Topics(settings.prefix)
    p = producer(settings)
    for i in range(7):
        state = TaskState(task_id=f"rm-{i}", handler="noop", status="succeeded", priority="medium", payload="null",
                          created_at=now(), updated_at=now(), version=3)
        p.produce(t.state, codec.encode(state), state.task_id.encode())
    assert p.flush(10) == 0
    api = Settings(**{**settings.model_dump(), "api_port": free_port(), "data_dir": tmp_path / "api"})
    base = f"http://127.0.0.1:{api.api_port}"
    proc = Component(api, "api", log_path=tmp_path / "api.log")

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            assert proc.proc.poll() is None, (tmp_path / "api.log").read_text()
            return False

    try:
        wait_until(ready, timeout=30, interval=0.2, message="API ready")
        r = taskstream(settings, "lag", "--json", "--api", base)
        assert r.returncode == 0, r.stderr
        read_model = json_lines(r)[-1]
        assert (read_model["role"], read_model["end"], read_model["lag"], read_model["caught_up"]) == (
            "read model", 7, 0, True)
        r = taskstream(settings, "lag", "--api", base)
        assert f"the API at {base} reports it caught up, lag 0" in r.stdout.splitlines()[-1]
    finally:
        proc.stop()


def test_lag_with_an_api_that_does_not_answer(settings) -> None:
    r = taskstream(settings, "lag", "--api", f"http://127.0.0.1:{free_port()}", "--timeout", "2")
    assert r.returncode == 1
    assert r.stderr.startswith("Error: the API at http://127.0.0.1:") and "/readyz" in r.stderr


@pytest.mark.parametrize("args", [["topics", "list"], ["topics", "describe", "events"], ["topics", "create"], ["lag"]])
def test_unreachable_broker_fails_with_one_clear_line(args) -> None:
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    r = taskstream(Settings(bootstrap_servers=closed, prefix="unreachable"), *args, "--timeout", "2")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert r.stderr.startswith("Error: no Kafka broker answered at " + closed), r.stderr


def test_a_topic_with_another_config_stops_every_component_at_start_up(broker, tmp_path) -> None:
    """A compacted events log would lose history: the check every component makes at start-up names it."""
    s = fresh(broker).model_copy(update={"data_dir": tmp_path / "data", "metrics_port": 0})
    t = Topics(s.prefix)
    events = next(spec for spec in catalogue(s) if spec.name == t.events)
    client = admin(s)
    for fut in client.create_topics([NewTopic(t.events, 3, 1, config={**events.config,
                                                                     "cleanup.policy": "compact"})]).values():
        fut.result(10)
    wrong = f"topic {t.events} has cleanup.policy=compact, expected delete"
    assert ensure_topics(s, catalogue(s)) == [wrong]  # the other topics created, this one left alone
    with pytest.raises(TopicMismatch) as exc:
        require_topics(s, catalogue(s))
    assert exc.value.problems == [wrong]

    for args in (["processor"], ["api", "--port", str(free_port())], ["dev", "--executors", "0"]):
        r = taskstream(s, *args, timeout=60)
        assert r.returncode != 0, (args, r.stderr)
        assert wrong in r.stderr, (args, r.stderr)
    r = taskstream(s, "processor")
    assert r.stderr.strip() == f"Error: {TopicMismatch([wrong])}", r.stderr  # one line, no traceback
