"""Nothing a client sends or a handler returns stops the processor, the executor or the relay (issue 12).

A real processor and executor (subprocesses) on the test Kafka node, the
API in-process. Each test pushes one kind of oversized data through the
stack, then submits an ordinary task that must succeed, and checks that no
component exited (nothing here restarts them: a crash would leave the later
task `pending`). The broker-level path (a record refused for good becomes a
dead letter naming it) is exercised on a processor object against the real
broker.
"""

from __future__ import annotations

import os
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from taskstream.api import create_app
from taskstream.schemas import BrokerUnavailable, ReadyTask, Settings, TaskFailed, Topics, codec, limits
from taskstream.streams.processor import Output, Processor
from tests.conftest import wait_until
from tests.kafka_helpers import Component, TopicReader, stop_all

pytestmark = [pytest.mark.integration, pytest.mark.slow]

V1 = "/api/v1"

HANDLERS = textwrap.dedent('''
    from taskstream.executors import handler

    @handler("limits.big_result")
    def big_result(payload, ctx):
        return "r" * payload["n"]

    @handler("limits.loud_failure")
    def loud_failure(payload, ctx):
        raise RuntimeError("E" * payload["n"])

    @handler("limits.part")
    def part(payload, ctx):
        return "p" * payload["n"]

    @handler("limits.fan_in")
    def fan_in(payload, ctx):
        return {k: None if v is None else len(v) for k, v in ctx.upstream.items()}
''')


@pytest.fixture
def stack(settings: Settings, tmp_path: Path, monkeypatch):
    """A processor and an executor loading this module's handlers; the API as a TestClient."""
    (tmp_path / "limits_handlers.py").write_text(HANDLERS)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    procs = [Component(settings, "processor", log_path=tmp_path / "processor.log"),
             Component(settings, "executor", "--handlers", "limits_handlers", log_path=tmp_path / "executor.log")]
    try:
        with TestClient(create_app(settings)) as client:
            yield client, procs
    finally:
        stop_all(*procs)


def _status(client: TestClient, task_id: str) -> dict:
    return client.get(f"{V1}/tasks/{task_id}").json()


def _ends(client: TestClient, task_id: str, timeout: float = 60) -> dict:
    return wait_until(lambda: (t := _status(client, task_id))["status"] in
                      ("succeeded", "failed", "cancelled", "upstream_failed") and t, timeout=timeout,
                      message=f"task {task_id} to end")


def _submit(client: TestClient, **fields) -> dict:
    r = client.post(f"{V1}/tasks", json=fields)
    assert r.status_code == 202, r.text
    return r.json()


def _still_running(procs, tmp_path: Path) -> None:
    for p, name in zip(procs, ("processor", "executor"), strict=True):
        log = (tmp_path / f"{name}.log").read_text(errors="replace")[-3000:]
        assert p.proc.poll() is None, f"the {name} exited with {p.proc.returncode}:\n{log}"


def _an_ordinary_task_still_runs(client: TestClient, procs, tmp_path: Path) -> None:
    t = _submit(client, handler="echo", payload={"after": True})
    assert _ends(client, t["id"])["status"] == "succeeded"
    _still_running(procs, tmp_path)


def test_large_payloads_and_results_within_the_limits_run_and_an_oversized_result_fails_the_attempt(
    stack, tmp_path: Path
) -> None:
    client, procs = stack
    # Refused at the door (it took the whole processing down before: payload + result > the record size).
    r = client.post(f"{V1}/tasks", json={"handler": "echo", "payload": {"s": "x" * 600_000}})
    assert r.status_code == 413 and "payload" in r.json()["detail"], r.text
    # Just under the limit, echoed back: a state of payload + result, twice the limit, still fits.
    near = "y" * (limits.MAX_PAYLOAD_BYTES - 100)
    echo = _submit(client, handler="echo", payload={"s": near})
    big = _submit(client, handler="limits.big_result", payload={"n": limits.MAX_RESULT_BYTES + 10},
                  retry={"max_attempts": 1})
    done = _ends(client, echo["id"])
    assert done["status"] == "succeeded" and done["result"] == {"s": near}
    failed = _ends(client, big["id"])
    assert failed["status"] == "failed"
    assert failed["error"] == (f"result too large: {limits.MAX_RESULT_BYTES + 12:,} bytes of JSON > "
                               f"{limits.MAX_RESULT_BYTES:,}")
    _an_ordinary_task_still_runs(client, procs, tmp_path)


def test_a_huge_error_text_is_cut_and_the_task_fails_normally(stack, tmp_path: Path) -> None:
    client, procs = stack
    t = _submit(client, handler="limits.loud_failure", payload={"n": 2_000_000}, retry={"max_attempts": 1})
    failed = _ends(client, t["id"])
    assert failed["status"] == "failed"
    assert len(failed["error"]) == limits.MAX_ERROR_CHARS
    assert failed["error"].startswith("RuntimeError: EEEE") and "[cut: 2,000,014 characters" in failed["error"]
    _an_ordinary_task_still_runs(client, procs, tmp_path)


def test_a_fan_in_of_large_results_carries_what_fits_and_runs(stack, tmp_path: Path) -> None:
    client, procs = stack
    part = 63 * 1024
    spec = [{"key": f"p{i}", "handler": "limits.part", "payload": {"n": part}} for i in range(16)]
    spec.append({"key": "join", "handler": "limits.fan_in", "depends_on": [f"p{i}" for i in range(16)]})
    r = client.post(f"{V1}/workflows", json={"tasks": spec})
    assert r.status_code == 202, r.text
    ids = r.json()["tasks"]
    joined = _ends(client, ids["join"], timeout=90)
    assert joined["status"] == "succeeded", joined
    seen = {k: v for k, v in joined["result"].items() if k.startswith("p")}  # by workflow key
    carried = [k for k, v in seen.items() if v is not None]
    assert len(seen) == 16
    assert 0 < len(carried) <= limits.MAX_UPSTREAM_RESULTS_BYTES // (part + 2)
    assert all(seen[k] == part for k in carried)
    _an_ordinary_task_still_runs(client, procs, tmp_path)


def test_a_record_the_broker_refuses_is_answered_by_where_it_was_going(settings: Settings) -> None:
    """A retry record: a value-less dead letter naming it. A ready message: the attempt fails for good with the
    reason. The state or the log: the batch is not committed (the processor stops)."""
    topics = Topics(settings.prefix)
    processor = Processor(settings, member_id="limits-test")
    dlq, events = TopicReader(settings, topics.dlq), TopicReader(settings, topics.events)
    too_big = b"z" * (limits.MAX_RECORD_BYTES + 1)
    try:
        processor._produce(
            Output(topics.retry("5s"), b"task-x", too_big, [(codec.EVENT_TYPE_HEADER, b"TaskRetryScheduled")])
        )
        ready = ReadyTask(task_id="task-r", occurred_at=datetime.now(UTC), producer="p", attempt=2, handler="echo",
                          priority="high", payload='"' + "p" * (limits.MAX_RECORD_BYTES + 10) + '"')
        processor._produce(Output(topics.ready("high"), b"task-r", codec.encode(ready), codec.headers(ready)))
        processor._produce(Output(topics.events, b"task-y", b"fine", []))
        processor._flush_and_check()  # raises on anything but these refusals
        dlq.until(lambda msgs: len(msgs) >= 1, message="the dead letter")
        [letter] = dlq.messages
        headers = dict(letter.headers())
        assert letter.key() == b"task-x" and letter.value() in (None, b"")
        assert headers["source-topic"] == topics.retry("5s").encode()
        assert headers[codec.EVENT_TYPE_HEADER] == b"TaskRetryScheduled"
        assert b"too large" in headers["reason"].lower() or b"size" in headers["reason"].lower()
        events.until(lambda msgs: len(msgs) >= 2, message="the failure of task-r")
        [failed] = [v for v in events.values() if v is not None]
        assert isinstance(failed, TaskFailed) and failed.task_id == "task-r" and failed.attempt == 2
        assert failed.permanent and failed.error.startswith("ready message refused by the broker")

        processor._produce(Output(topics.state, b"task-s", too_big, []))
        with pytest.raises(BrokerUnavailable, match="refused a record of task-s"):
            processor._flush_and_check()
    finally:
        dlq.close()
        events.close()
        processor.close()


def test_a_relay_thread_that_dies_stops_its_processor_with_an_error(settings: Settings, monkeypatch) -> None:
    import threading

    from taskstream.streams import relay as relay_module

    def broken(self, stop):
        raise RuntimeError("relay bug")

    monkeypatch.setattr(relay_module.RetryRelay, "run", broken)
    processor = Processor(settings, member_id="relay-dies")
    stop = threading.Event()
    with pytest.raises(BrokerUnavailable, match="relay bug"):
        processor.run(stop)  # returns only because the relay's death set ``stop``
    assert stop.is_set()
