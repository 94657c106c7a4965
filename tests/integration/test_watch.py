"""Live updates (issue 17): SSE watches and the taskstream.v1 gRPC API against one live stack.

The stack for the module: a processor, an executor that loads this
module's handlers (``watch.flaky`` fails its first attempt and succeeds on
the second) and the API as a ``taskstream api`` subprocess serving HTTP and
gRPC on free ports (a subprocess, so a test can restart it). What a watch
sends is compared with what the processor wrote to ``<p>.state``: every
version, in order, nothing twice.
"""

from __future__ import annotations

import asyncio
import textwrap
import time
import uuid
from pathlib import Path

import httpx
import pytest

from taskstream.cli.broker import free_port
from taskstream.schemas import Settings, TaskState, Topics, catalogue, codec
from taskstream.schemas.kafka import ensure_topics, wait_for_broker
from taskstream.sse import read_sse
from tests.conftest import wait_until
from tests.integration.test_dag import ComponentIn
from tests.kafka_helpers import Component, TopicReader

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HANDLERS = '''\
import time

from taskstream.executors import handler


@handler("watch.flaky")
def flaky(payload, ctx):
    time.sleep(payload.get("sleep", 0.3))  # longer than started_event_after_s: the attempt reports running
    if ctx.attempt < payload.get("succeed_at", 2):
        raise RuntimeError(f"planned failure of attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}
'''

FLAKY = {"handler": "watch.flaky", "retry": {"max_attempts": 3, "backoff": {"initial_s": 0.3, "jitter": 0}}}


class Stack:
    """Processor, executor and API (HTTP + gRPC) on one prefix; the API can be restarted."""

    def __init__(self, settings: Settings, tmp: Path) -> None:
        self.settings = settings
        self.tmp = tmp
        (tmp / "watch_handlers.py").write_text(textwrap.dedent(HANDLERS))
        self.processor = Component(settings, "processor", log_path=tmp / "processor.log")
        self.executor = ComponentIn(settings, "executor", "--handlers", "watch_handlers", cwd=tmp,
                                    log_path=tmp / "executor.log")
        self.base = f"http://127.0.0.1:{settings.api_port}"
        self.grpc_target = f"127.0.0.1:{settings.grpc_port}"
        self.api: Component | None = None
        self.start_api()
        self.states = StateLog(settings)

    def start_api(self) -> None:
        self.api = Component(self.settings, "api", log_path=self.tmp / "api.log")

        def up() -> bool:
            assert self.api.proc.poll() is None, (self.tmp / "api.log").read_text()[-3000:]
            try:
                return httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, timeout=30, interval=0.1, message="API ready")

    def stop_api(self) -> None:
        self.api.stop()

    def submit(self, **fields) -> dict:
        r = httpx.post(f"{self.base}/api/v1/tasks", json={**FLAKY, **fields}, timeout=10)
        assert r.status_code == 202, r.text
        return r.json()

    def stop(self) -> None:
        if self.api is not None:
            self.api.stop()
        self.executor.stop()
        self.processor.stop()
        self.states.reader.close()


class StateLog:
    """Every task state the processor wrote to ``<p>.state``, per task, in log order."""

    def __init__(self, settings: Settings) -> None:
        self.reader = TopicReader(settings, Topics(settings.prefix).state)

    def of(self, task_id: str) -> list[TaskState]:
        self.reader.poll()
        out = []
        for m in self.reader.messages:
            if m.key() == task_id.encode() and m.value():
                state = codec.decode(m.value())
                if isinstance(state, TaskState):
                    out.append(state)
        return out

    def until_terminal(self, task_id: str, timeout: float = 30.0) -> list[TaskState]:
        return wait_until(lambda: (s := self.of(task_id)) and s[-1].status in ("succeeded", "failed") and s,
                          timeout=timeout, message=f"task {task_id} terminal in <p>.state")


@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("watch")
    s = Settings(bootstrap_servers=broker, prefix=f"t{uuid.uuid4().hex[:10]}", partitions=3, embedded_broker=True,
                 data_dir=tmp / "data", session_timeout_ms=6000, log_level="WARNING", metrics_port=0,
                 started_event_after_s=0.1, heartbeat_interval_s=0.2,
                 api_port=free_port(), grpc_port=free_port(), watch_heartbeat_s=1.0)
    wait_for_broker(s)
    assert ensure_topics(s, catalogue(s)) == []
    st = Stack(s, tmp)
    yield st
    st.stop()


def versions(states) -> list[int]:
    return [s["version"] if isinstance(s, dict) else s.version for s in states]


# ---------------------------------------------------------------------- SSE


def test_sse_watch_sees_every_state_of_a_retried_task_in_order_and_resumes_without_gaps(stack: Stack) -> None:
    task = stack.submit(payload={"sleep": 0.4})
    url = f"{stack.base}/api/v1/tasks/{task['id']}/watch"
    got: list = []

    async def run() -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(30)) as c:
            async for e in read_sse(c, url):  # the current state, then one change; then hang up
                assert e.event == "task"
                got.append(e)
                if len(got) == 2:
                    break
            await asyncio.sleep(1.0)  # changes happen while nobody listens
            async for e in read_sse(c, url, last_event_id=got[-1].id):
                assert e.event == "task"
                got.append(e)

    asyncio.run(asyncio.wait_for(run(), 60))
    shown = [e.json() for e in got]
    assert shown[-1]["status"] == "succeeded" and shown[-1]["attempt"] == 2
    logged = stack.states.until_terminal(task["id"])
    # after the first event (the current state), exactly the processor's states, in order, none twice
    assert versions(shown[1:]) == [v for v in versions(logged) if v > shown[0]["version"]]
    statuses = [t["status"] for t in shown]
    print(f"\nSSE watch of a retried task: {statuses}, versions {versions(shown)}, log {versions(logged)}")
    assert "scheduled" in statuses and statuses.index("scheduled") < len(statuses) - 1  # the retry was seen
    assert [t["attempt"] for t in shown if t["status"] == "running"] == [1, 2]
    assert [e.id.split(":")[1] for e in got] == [str(v) for v in versions(shown)]

    # a finished task: its terminal state, and the stream ends
    async def again() -> list:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10)) as c:
            return [e async for e in read_sse(c, url)]

    ended = asyncio.run(asyncio.wait_for(again(), 20))
    assert [e.json()["status"] for e in ended] == ["succeeded"]


def test_sse_filtered_watch_starts_with_a_position_resumes_from_it_and_404s(stack: Stack) -> None:
    handler = f"watch.flaky"
    label_run = uuid.uuid4().hex[:6]
    url = f"{stack.base}/api/v1/tasks/watch"
    first: list = []

    async def start() -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(30)) as c:
            async for e in read_sse(c, url, params={"handler": handler, "status": ["succeeded"]}):
                first.append(e)
                break

    asyncio.run(asyncio.wait_for(start(), 20))
    assert first[0].event == "position" and first[0].json() == {"cursor": first[0].id}
    tasks = [stack.submit(payload={"sleep": 0.05, "succeed_at": 1}, name=f"{label_run}-{i}") for i in range(3)]
    for t in tasks:
        stack.states.until_terminal(t["id"])
    seen: list = []

    async def resume() -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(30)) as c:
            async for e in read_sse(c, url, params={"handler": handler, "status": "succeeded"},
                                    last_event_id=first[0].id):
                if e.event == "task" and e.json()["name"].startswith(label_run):
                    seen.append(e.json())
                if len(seen) == 3:
                    break

    asyncio.run(asyncio.wait_for(resume(), 20))
    assert sorted(t["id"] for t in seen) == sorted(t["id"] for t in tasks)
    assert {t["status"] for t in seen} == {"succeeded"}

    r = httpx.get(f"{stack.base}/api/v1/tasks/nope/watch", timeout=5)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    r = httpx.get(url, headers={"Last-Event-ID": "x.y"}, timeout=5)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "Last-Event-ID"
