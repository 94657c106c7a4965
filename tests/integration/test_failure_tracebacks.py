"""A failure shows why (issue 26): the exception type, its message and the handler's traceback, end to end.

A processor, an executor loading this module's handlers and the API (HTTP
and gRPC) run as subprocesses on the session's Kafka node. ``why.deep``
raises ValueError two helper calls below the handler; ``why.huge`` raises
from 400 frames down with a message of 40,000 characters. The task JSON over
HTTP and gRPC, the task's events and ``taskstream tasks get`` show the type,
the message and the traceback (naming the helper, bounded), and nothing of
the executor's own frames.
"""

from __future__ import annotations

import subprocess
import textwrap
import uuid
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import json_format

from taskstream.cli.broker import free_port
from taskstream.grpc.v1 import tasks_pb2, tasks_pb2_grpc
from taskstream.schemas import Settings, catalogue
from taskstream.schemas.kafka import ensure_topics, wait_for_broker
from taskstream.schemas.limits import MAX_TRACEBACK_CHARS, MAX_TRACEBACK_FRAMES
from tests.conftest import SESSION_TIMEOUT_MS, wait_until
from tests.integration.live_stack import Proc
from tests.integration.test_cli import _cli
from tests.kafka_helpers import stop_all

pytestmark = pytest.mark.integration

HANDLERS = '''\
from taskstream.executors import handler


def check_quantity(line):
    if line["quantity"] <= 0:
        raise ValueError(f"quantity must be positive, got {line['quantity']}")


def parse_order(order):
    for line in order["lines"]:
        check_quantity(line)


@handler("why.deep")
def deep(payload, ctx):
    parse_order(payload)


def dig(n, message):
    if n == 0:
        raise RuntimeError(message)
    dig_on(n - 1, message)


def dig_on(n, message):
    dig(n, message)


@handler("why.huge")
async def huge(payload, ctx):
    dig(400, "x" * 40_000)
'''


class Stack:
    """Processor, executor and API (HTTP + gRPC) on a prefix of their own."""

    def __init__(self, broker: str, folder: Path) -> None:
        self.folder = folder
        self.settings = Settings(bootstrap_servers=broker, prefix=f"t{uuid.uuid4().hex[:10]}", partitions=3,
                                 data_dir=folder / "data", session_timeout_ms=SESSION_TIMEOUT_MS,
                                 log_level="WARNING", metrics_port=0, api_port=free_port(), grpc_port=free_port())
        self.url = f"http://127.0.0.1:{self.settings.api_port}"
        wait_for_broker(self.settings)
        assert ensure_topics(self.settings, catalogue(self.settings)) == []
        (folder / "why_handlers.py").write_text(textwrap.dedent(HANDLERS))
        self.procs = [
            Proc(self.settings, "processor", cwd=folder, log=folder / "processor.log"),
            Proc(self.settings, "executor", "--handlers", "why_handlers", cwd=folder, log=folder / "executor.log"),
            Proc(self.settings, "api", cwd=folder, log=folder / "api.log"),
        ]
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.settings.grpc_port}")
        self.tasks = tasks_pb2_grpc.TaskServiceStub(self.channel)

    def check(self) -> None:
        for p in self.procs:
            if not p.alive():
                logs = "\n".join(f"--- {f.name}\n{f.read_text()[-2000:]}" for f in sorted(self.folder.glob("*.log")))
                raise AssertionError(f"{p.proc.args[3:]} exited with {p.proc.returncode}\n{logs}")

    def ready(self) -> bool:
        self.check()
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def failed(self, handler: str, payload: object) -> dict:
        """Submit a task of one attempt and return its JSON once it failed."""
        r = httpx.post(f"{self.url}/api/v1/tasks", json={"handler": handler, "payload": payload,
                                                         "retry": {"max_attempts": 1}}, timeout=10)
        assert r.status_code == 202, r.text
        task_id = r.json()["id"]
        assert r.json()["error_type"] is None and r.json()["traceback"] is None  # the fields are there, null

        def done() -> dict | None:
            self.check()
            task = httpx.get(f"{self.url}/api/v1/tasks/{task_id}", timeout=5).json()
            return task if task["status"] == "failed" else None

        task: dict = wait_until(done, timeout=60, interval=0.2, message=f"task {task_id} failed")
        return task

    def stop(self) -> None:
        self.channel.close()
        stop_all(*reversed(self.procs))
        for p in self.procs:
            p.log.close()


@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory):
    s = Stack(broker, tmp_path_factory.mktemp("why"))
    wait_until(s.ready, timeout=60, interval=0.2, message="the API ready")
    yield s
    s.stop()


def frames(traceback: str) -> list[str]:
    return [line for line in traceback.splitlines() if line.startswith('  File "')]


def test_a_failure_deep_in_a_helper_shows_its_type_message_and_traceback_over_http_grpc_and_the_cli(stack):
    task = stack.failed("why.deep", {"lines": [{"quantity": 2}, {"quantity": -3}]})
    assert task["error"] == "ValueError: quantity must be positive, got -3"
    assert task["error_type"] == "ValueError"
    tb = task["traceback"]
    assert tb.startswith("Traceback (most recent call last):")
    names = [f.rsplit(" in ", 1)[1] for f in frames(tb)]
    assert names == ["deep", "parse_order", "check_quantity"]  # the handler's frames, none of the executor's
    assert "why_handlers.py" in tb and "taskstream" not in tb.replace("ValueError", "")
    assert tb.endswith("ValueError: quantity must be positive, got -3")

    got = stack.tasks.GetTask(tasks_pb2.GetTaskRequest(id=task["id"]))
    assert (got.error, got.error_type, got.traceback) == (task["error"], "ValueError", tb)
    assert json_format.MessageToDict(got, preserving_proto_field_name=True)["traceback"] == tb

    events = httpx.get(f"{stack.url}/api/v1/tasks/{task['id']}/events", timeout=5).json()["events"]
    [failed] = [e for e in events if e["type"] == "TaskFailed"]
    assert (failed["error_type"], failed["traceback"]) == ("ValueError", tb)

    env = {"TASKSTREAM_URL": stack.url, "NO_COLOR": "1", "COLUMNS": "200", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([*_cli(), "tasks", "get", task["id"]], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "error_type" in out.stdout and "ValueError" in out.stdout
    assert "in check_quantity" in out.stdout and "in parse_order" in out.stdout


def test_a_huge_traceback_is_bounded_and_keeps_the_innermost_frames(stack):
    task = stack.failed("why.huge", None)
    assert task["error_type"] == "RuntimeError"
    tb = task["traceback"]
    assert len(tb) <= MAX_TRACEBACK_CHARS
    # The innermost frames only; the message (in ``error`` as well) is cut to leave room for them.
    assert len(frames(tb)) == MAX_TRACEBACK_FRAMES and " in huge" not in tb and frames(tb)[-1].endswith(" in dig")
    assert "RuntimeError: xxxx" in tb and tb.endswith("characters > 4,096]")
    got = stack.tasks.GetTask(tasks_pb2.GetTaskRequest(id=task["id"]))
    assert got.traceback == tb and got.error_type == "RuntimeError"
