"""OpenTelemetry traces end to end (docs/tracing.md): a whole stack exports its spans to a local OTLP receiver.

The receiver is a plain ``http.server`` on 127.0.0.1 that decodes each
``POST /v1/traces`` (an ``ExportTraceServiceRequest``, opentelemetry-proto)
and keeps every span with its service name. A three-task workflow
(a -> b -> c, b fails once and is retried) submitted with a caller's
``traceparent`` must come back as one trace: the workflow's submit span
under the caller's span, each task's submit under it, every queueing,
dependency hop and attempt under the span that caused it, across the API,
processor and executor processes.
"""

from __future__ import annotations

import gzip
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from taskstream.cli.broker import free_port
from tests.conftest import wait_until
from tests.integration.live_stack import LiveStack

pytest.importorskip("opentelemetry.proto")
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2  # noqa: E402

FLAKY = '''\
from taskstream.executors import handler


@handler("flaky")
def flaky(payload, ctx):
    if ctx.attempt == 1:
        raise ValueError("the first attempt fails")
    return {"attempt": ctx.attempt}
'''

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


@dataclass(frozen=True)
class Got:
    """One exported span: its service, name, ids (hex), parent id ('' for a root) and attributes."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent: str
    attributes: dict
    error: bool


class Receiver:
    """An OTLP/HTTP traces endpoint on a free loopback port; ``spans`` is every span received so far."""

    def __init__(self) -> None:
        self.spans: list[Got] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.take(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def take(self, request) -> None:
        got = []
        for rs in request.resource_spans:
            service = next(a.value.string_value for a in rs.resource.attributes if a.key == "service.name")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    attributes = {a.key: _value(a.value) for a in s.attributes}
                    got.append(Got(service, s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                                   attributes, s.status.code == 2))
        with self.lock:
            self.spans += got

    def trace(self, trace_id: str) -> list[Got]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory, receiver):
    grpc_port = free_port()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100",
           "TASKSTREAM_GRPC_PORT": str(grpc_port)}
    s = LiveStack(broker, tmp_path_factory.mktemp("tracing"), modules={"flaky": FLAKY}, env=env).wait_ready()
    s.grpc_target = f"127.0.0.1:{grpc_port}"
    yield s
    s.stop()


def test_a_workflow_with_a_retry_is_one_trace_with_every_span_under_its_cause(stack, receiver):
    tasks = [
        {"key": "a", "handler": "noop"},
        {"key": "b", "handler": "flaky", "depends_on": ["a"],
         "retry": {"max_attempts": 3, "backoff": {"initial_s": 0.1, "jitter": 0}}},
        {"key": "c", "handler": "echo", "depends_on": ["b"], "payload": {"n": 1}},
    ]
    answer = httpx.post(f"{stack.url}/api/v1/workflows", json={"tasks": tasks}, timeout=10,
                        headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "tracestate": "caller=1"})
    assert answer.status_code == 202, answer.text
    ids = answer.json()["tasks"]
    key_of = {task_id: key for key, task_id in ids.items()}

    def all_exported() -> bool:  # each service exports on its own schedule: wait for every span asserted below
        got = Counter(s.name for s in receiver.trace(CALLER_TRACE))
        want = {"submit workflow": 1, "submit": 3, "dependency": 2, "queue": 4, "attempt": 4}
        return all(got[name] >= n for name, n in want.items())

    wait_until(lambda: stack.check() or all_exported(), timeout=60, interval=0.2, message="every span of the trace")
    for key, task_id in ids.items():
        task = httpx.get(f"{stack.url}/api/v1/tasks/{task_id}", timeout=5).json()
        assert task["status"] == "succeeded" and task["trace_id"] == CALLER_TRACE, (key, task)

    spans = receiver.trace(CALLER_TRACE)
    by_id = {s.span_id: s for s in spans}
    named = {name: [s for s in spans if s.name == name] for name in ("submit workflow", "submit", "queue",
                                                                     "dependency", "attempt")}
    assert {s.name for s in spans} == set(named), "one trace, only taskstream's spans"
    # the API: the workflow's submit under the caller's span, each task's submit under it
    (workflow,) = named["submit workflow"]
    assert (workflow.parent, workflow.service) == (CALLER_SPAN, "taskstream-api")
    submits = {key_of[s.attributes["taskstream.task_id"]]: s for s in named["submit"]}
    assert set(submits) == {"a", "b", "c"}
    assert {(s.parent, s.service) for s in submits.values()} == {(workflow.span_id, "taskstream-api")}
    # the processor: a dependency hop per edge under the dependent's submit, and the queueing it caused under it
    hops = {key_of[s.attributes["taskstream.task_id"]]: s for s in named["dependency"]}
    assert set(hops) == {"b", "c"} and len(named["dependency"]) == 2
    for key, upstream in (("b", "a"), ("c", "b")):
        hop = hops[key]
        assert (hop.parent, hop.service) == (submits[key].span_id, "taskstream-processor")
        assert hop.attributes["taskstream.upstream_task_id"] == ids[upstream]
        assert hop.attributes["taskstream.upstream_outcome"] == "succeeded"
    queues: dict[tuple[str, int], Got] = {}
    for s in named["queue"]:
        queues[(key_of[s.attributes["taskstream.task_id"]], s.attributes["taskstream.attempt"])] = s
        assert s.service == "taskstream-processor"
    assert set(queues) == {("a", 1), ("b", 1), ("b", 2), ("c", 1)} and len(named["queue"]) == 4
    assert queues[("a", 1)].parent == submits["a"].span_id  # no upstream: straight under its submit
    assert queues[("b", 1)].parent == hops["b"].span_id  # queued by the resolution of its dependency
    assert queues[("b", 2)].parent == submits["b"].span_id  # the retry, queued by the relay's TaskQueued
    assert queues[("c", 1)].parent == hops["c"].span_id
    # the executor: one attempt span per attempt, under the queueing that sent it, with its outcome
    runs = {}
    for s in named["attempt"]:
        key, attempt = key_of[s.attributes["taskstream.task_id"]], s.attributes["taskstream.attempt"]
        runs[(key, attempt)] = s
        assert s.service == "taskstream-executor"
        assert by_id[s.parent] is queues[(key, attempt)]
    assert set(runs) == set(queues) and len(named["attempt"]) == 4
    assert {k: (s.attributes["taskstream.outcome"], s.error) for k, s in runs.items()} == {
        ("a", 1): ("succeeded", False), ("b", 1): ("retry", True), ("b", 2): ("succeeded", False),
        ("c", 1): ("succeeded", False)}
    assert runs[("b", 1)].attributes["error.type"] == "ValueError"
    assert {s.attributes["taskstream.handler"] for s in runs.values()} == {"noop", "flaky", "echo"}


def test_a_task_submitted_without_a_traceparent_starts_a_trace_of_its_own(stack, receiver):
    answer = httpx.post(f"{stack.url}/api/v1/tasks", json={"handler": "noop"}, timeout=10)
    assert answer.status_code == 202
    task = answer.json()
    trace_id = task["trace_id"]
    assert trace_id is not None and len(trace_id) == 32 and trace_id != CALLER_TRACE
    wait_until(lambda: stack.check() or {"submit", "queue", "attempt"} <= {s.name for s in receiver.trace(trace_id)},
               timeout=30, interval=0.2, message="the submit, queue and attempt spans")
    spans = {s.name: s for s in receiver.trace(trace_id)}
    assert spans["submit"].parent == ""  # a root: the API started the trace
    assert spans["queue"].parent == spans["submit"].span_id
    assert spans["attempt"].parent == spans["queue"].span_id
    assert spans["attempt"].attributes["taskstream.outcome"] == "succeeded"


def test_a_grpc_submit_continues_the_trace_of_its_metadata(stack, receiver):
    import grpc

    from taskstream.grpc.v1 import tasks_pb2, tasks_pb2_grpc

    trace, caller = "5bf92f3577b34da6a3ce929d0e0e4737", "00f067aa0ba902b9"
    with grpc.insecure_channel(stack.grpc_target) as channel:
        task = tasks_pb2_grpc.TaskServiceStub(channel).SubmitTask(
            tasks_pb2.SubmitTaskRequest(task=tasks_pb2.TaskSpec(handler="noop")), timeout=10,
            metadata=(("traceparent", f"00-{trace}-{caller}-01"),))
    assert httpx.get(f"{stack.url}/api/v1/tasks/{task.id}", timeout=5).json()["trace_id"] == trace
    wait_until(lambda: stack.check() or {"submit", "queue", "attempt"} <= {s.name for s in receiver.trace(trace)},
               timeout=30, interval=0.2, message="the submit, queue and attempt spans")
    spans = {s.name: s for s in receiver.trace(trace)}
    assert (spans["submit"].parent, spans["submit"].attributes["taskstream.task_id"]) == (caller, task.id)
    assert spans["attempt"].parent == spans["queue"].span_id and spans["queue"].parent == spans["submit"].span_id
