"""Flow control over gRPC on the real broker (``taskstream.v1.FlowService`` and ``SubmitTask``'s ``concurrency``).

A whole stack (processor, executor, API with gRPC) with a topic prefix of its
own. Every RPC answers as its HTTP route does, through the same service
calls: a handler paused over gRPC holds a task submitted over gRPC
(``pending``, ``waiting_for: "paused:handler:<name>"``) until ResumeHandler
runs it; a workflow's pause is listed and resumed; a handler's limit and rate
are set, listed by ListLimits and cleared, a bad one refused with
INVALID_ARGUMENT naming the field; a task submitted with a rated
``concurrency`` shows its key and rate, and the second of its key waits for
the rate, as ListLimits shows.
"""

from __future__ import annotations

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from taskstream.grpc.v1 import flow_pb2, flow_pb2_grpc, tasks_pb2, tasks_pb2_grpc
from tests.conftest import wait_until
from tests.integration.live_stack import LiveStack

pytestmark = [pytest.mark.integration]


class Grpc:
    """The stack's FlowService and TaskService stubs over one channel."""

    def __init__(self, stack: LiveStack) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{stack.settings.grpc_port}")
        self.flow = flow_pb2_grpc.FlowServiceStub(self.channel)
        self.tasks = tasks_pb2_grpc.TaskServiceStub(self.channel)

    def task(self, task_id: str) -> tasks_pb2.Task:
        return self.tasks.GetTask(tasks_pb2.GetTaskRequest(id=task_id), timeout=10)


@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory):
    s = LiveStack(broker, tmp_path_factory.mktemp("grpcflow"), grpc=True).wait_ready()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def rpc(stack):
    g = Grpc(stack)
    try:
        yield g
    finally:
        g.channel.close()


def test_a_handler_paused_over_grpc_holds_a_task_until_resumed(stack, rpc):
    paused = rpc.flow.PauseHandler(flow_pb2.PauseRequest(name="noop", reason="deploy"), timeout=10)
    assert (paused.kind, paused.name, paused.paused, paused.reason) == ("handler", "noop", True, "deploy")
    assert paused.partitions_paused == 3 and paused.HasField("paused_at")
    listed = rpc.flow.ListPauses(flow_pb2.ListPausesRequest(kind="handler"), timeout=10)
    assert [(p.kind, p.name) for p in listed.pauses] == [("handler", "noop")]

    task = rpc.tasks.SubmitTask(tasks_pb2.SubmitTaskRequest(task=tasks_pb2.TaskSpec(handler="noop")), timeout=10)

    def held() -> tasks_pb2.Task | None:
        stack.check()
        t = rpc.task(task.id)
        return t if t.waiting_for == "paused:handler:noop" else None

    t = wait_until(held, timeout=30, interval=0.2, message="the task held by the pause")
    assert t.status == "pending"

    resumed = rpc.flow.ResumeHandler(flow_pb2.ResumeRequest(name="noop"), timeout=10)
    assert not resumed.paused and resumed.partitions_paused == 0
    wait_until(lambda: stack.check() or rpc.task(task.id).status == "succeeded", timeout=30, interval=0.2,
               message="the released task succeeded")
    assert list(rpc.flow.ListPauses(flow_pb2.ListPausesRequest(), timeout=10).pauses) == []


def test_a_workflow_is_paused_and_resumed_over_grpc(rpc):
    paused = rpc.flow.PauseWorkflow(flow_pb2.PauseRequest(name="wf-grpc"), timeout=10)
    assert (paused.kind, paused.name, paused.paused) == ("workflow", "wf-grpc", True)
    listed = rpc.flow.ListPauses(flow_pb2.ListPausesRequest(kind="workflow"), timeout=10)
    assert [p.name for p in listed.pauses] == ["wf-grpc"]
    assert not rpc.flow.ResumeWorkflow(flow_pb2.ResumeRequest(name="wf-grpc"), timeout=10).paused
    assert list(rpc.flow.ListPauses(flow_pb2.ListPausesRequest(kind="workflow"), timeout=10).pauses) == []
    with pytest.raises(grpc.RpcError) as refused:
        rpc.flow.ListPauses(flow_pb2.ListPausesRequest(kind="schedule"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_handler_limit_and_rate_over_grpc(stack, rpc):
    set_ = rpc.flow.SetHandlerLimit(flow_pb2.SetHandlerLimitRequest(name="grpc.h", limit=3, rate=5, per_s=2),
                                    timeout=10)
    assert (set_.name, set_.limit, set_.rate, set_.per_s) == ("grpc.h", 3, 5, 2.0)
    handlers = rpc.flow.ListLimits(flow_pb2.ListLimitsRequest(), timeout=10).handlers
    assert [(h.name, h.limit, h.rate, h.per_s) for h in handlers] == [("grpc.h", 3, 5, 2.0)]
    # the same through HTTP: one service behind both
    assert httpx.get(f"{stack.url}/api/v1/limits/handlers", timeout=10).json()["limits"] == [
        {"kind": "handler", "name": "grpc.h", "limit": 3, "rate": 5, "per_s": 2.0}]

    with pytest.raises(grpc.RpcError) as refused:
        rpc.flow.SetHandlerLimit(flow_pb2.SetHandlerLimitRequest(name="grpc.h", rate=5), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(refused.value)
    bad = error_details_pb2.BadRequest()
    assert status is not None and status.details[0].Unpack(bad)
    assert "per_s" in refused.value.details()

    cleared = rpc.flow.ClearHandlerLimit(flow_pb2.ClearHandlerLimitRequest(name="grpc.h"), timeout=10)
    assert (cleared.name, cleared.HasField("limit"), cleared.HasField("rate")) == ("grpc.h", False, False)
    assert list(rpc.flow.ListLimits(flow_pb2.ListLimitsRequest(), timeout=10).handlers) == []


def test_a_task_submitted_over_grpc_with_a_rated_key_waits_for_the_rate(stack, rpc):
    key = "grpc-rated"
    spec = tasks_pb2.TaskSpec(handler="noop", concurrency=tasks_pb2.Concurrency(key=key, rate=1, per_s=600))
    first = rpc.tasks.SubmitTask(tasks_pb2.SubmitTaskRequest(task=spec), timeout=10)
    assert (first.concurrency.key, first.concurrency.HasField("limit"), first.concurrency.rate,
            first.concurrency.per_s) == (key, False, 1, 600.0)
    second = rpc.tasks.SubmitTask(tasks_pb2.SubmitTaskRequest(task=spec), timeout=10)

    def waiting() -> flow_pb2.Limit | None:
        stack.check()
        found = rpc.flow.ListLimits(flow_pb2.ListLimitsRequest(key=key), timeout=10).limits
        return found[0] if found and found[0].waiting == 1 else None

    entry = wait_until(waiting, timeout=30, interval=0.2, message="the second task waiting for the key's rate")
    assert (entry.key, entry.rate, entry.per_s, entry.blocked_by, entry.rate_used) == (key, 1, 600.0, "rate", 1)
    assert list(entry.waiting_tasks) == [second.id] and entry.HasField("next_start_at")
    # the gate's view and the task's state come from different topics: the read model may show the hold later
    t = wait_until(lambda: (t := rpc.task(second.id)).waiting_for and t, timeout=30, interval=0.1,
                   message="the second task's waiting_for in the read model")
    assert (t.status, t.waiting_for) == ("pending", f"concurrency:{key}")
    rpc.tasks.CancelTask(tasks_pb2.CancelTaskRequest(id=second.id), timeout=10)

    with pytest.raises(grpc.RpcError) as refused:
        rpc.tasks.SubmitTask(tasks_pb2.SubmitTaskRequest(task=tasks_pb2.TaskSpec(
            handler="noop", concurrency=tasks_pb2.Concurrency(key=key, rate=1))), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "concurrency" in refused.value.details()
