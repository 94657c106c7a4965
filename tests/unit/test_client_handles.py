"""Client handles without a server: outcomes, failures as exceptions, typed handler references, the retry value.

The API is an ``httpx.MockTransport`` answering a submit and a watch stream
(Server-Sent Events) as the real one does; the live behaviour is in
``tests/integration/test_client_handles.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time

import httpx
import pytest

from taskstream.client import (
    AsyncClient,
    Client,
    RetryPolicy,
    Task,
    TaskCancelled,
    TaskFailed,
    TaskHandle,
    UpstreamFailed,
    Workflow,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowRun,
    handler_name,
    sse,
)
from taskstream.client import _handles as handles
from taskstream.executors import Registry, handler

TASK = {"id": "t1", "handler": "echo", "status": "queued", "priority": "high", "version": 1}
FAILED = {**TASK, "status": "failed", "attempt": 3, "error": "ValueError: no luck", "error_type": "ValueError",
          "traceback": 'File "app.py", line 3, in fn\n    raise ValueError("no luck")\n'}


def api(final: dict, seen: list[httpx.Request] | None = None) -> httpx.MockTransport:
    """Answers POST /tasks with TASK, and the task's watch with its queued then its ``final`` state."""

    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        if request.url.path.endswith("/watch"):
            body = "".join(f"event: task\nid: {i}\ndata: {json.dumps(t)}\n\n" for i, t in enumerate([TASK, final]))
            return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})
        return httpx.Response(202, json=TASK)

    return httpx.MockTransport(handle)


def task(**fields) -> Task:
    return Task.from_json({**TASK, **fields})


@pytest.mark.parametrize(("status", "raised"), [("failed", TaskFailed), ("upstream_failed", UpstreamFailed),
                                                ("cancelled", TaskCancelled)])
def test_each_end_but_success_is_its_exception(status: str, raised: type) -> None:
    assert handles.outcome(task(status="succeeded", result={"ok": 1})) == {"ok": 1}
    with pytest.raises(raised) as exc:
        handles.outcome(task(status=status, error="why"))
    assert type(exc.value) is raised and exc.value.task.status == status and "t1 (echo)" in str(exc.value)
    for unfinished in ("pending", "scheduled", "queued", "running"):
        with pytest.raises(ValueError, match="has not ended"):
            handles.outcome(task(status=unfinished))


def test_result_raises_task_failed_carrying_error_type_and_traceback_from_the_task_json() -> None:
    with Client("http://api.test", transport=api(FAILED)) as ts:
        job = ts.submit("echo", {"x": 1})
        with pytest.raises(TaskFailed) as exc:
            job.result(timeout=5)
    failed = exc.value
    assert (failed.error, failed.error_type) == ("ValueError: no luck", "ValueError")
    assert failed.traceback == FAILED["traceback"] and failed.task.attempt == 3 and failed.status is None
    assert "no luck" in str(failed)


def test_an_api_without_error_type_and_traceback_gives_none() -> None:
    old = {k: v for k, v in FAILED.items() if k not in ("error_type", "traceback")}
    with Client("http://api.test", transport=api(old)) as ts, pytest.raises(TaskFailed) as exc:
        ts.submit("echo").result(timeout=5)
    assert exc.value.error == "ValueError: no luck" and exc.value.error_type is None and exc.value.traceback is None


def test_the_async_handle_raises_the_same() -> None:
    async def main() -> None:
        async with AsyncClient("http://api.test", transport=api(FAILED)) as ts:
            job = await ts.submit("echo")
            with pytest.raises(TaskFailed) as exc:
                await job.result(timeout=5)
            assert exc.value.error_type == "ValueError"
        async with AsyncClient("http://api.test", transport=api({**TASK, "status": "succeeded", "result": 7})) as ts:
            assert await (await ts.submit("echo")).result(timeout=5) == 7

    asyncio.run(main())


def test_a_handle_reads_the_submitted_task_but_status_and_result_are_methods() -> None:
    with Client("http://api.test", transport=api({**TASK, "status": "succeeded", "result": 3})) as ts:
        job = ts.submit("echo")
        assert job.id == "t1" and job.handler == "echo" and job.priority == "high" and job.version == 1
        assert job.task.status == "queued" and not job.terminal and job.raw == TASK
        assert callable(job.status) and callable(job.result) and job.result(timeout=5) == 3
        with pytest.raises(AttributeError):
            job.no_such_field  # noqa: B018 - reading it is the test
    # every name declared for type checkers is one the handle reads from its task
    declared = set(handles._TaskFields.__annotations__) - {"task"}
    assert declared <= {f.name for f in dataclasses.fields(Task)} | handles._ALSO
    assert not declared & handles._OWN


def test_workflow_failures_name_how_it_ended() -> None:
    run = WorkflowRun.from_json({"id": "w1", "status": "failed", "counts": {"failed": 1, "upstream_failed": 1}})
    failed = handles.workflow_failure(run, [task(status="failed", error="boom")])
    assert isinstance(failed, WorkflowFailed) and failed.failures[0].error == "boom"
    assert "1 failed, 1 upstream_failed" in str(failed) and "boom" in str(failed)
    cancelled = handles.workflow_failure(dataclasses.replace(run, status="cancelled"), [])
    assert isinstance(cancelled, WorkflowCancelled) and cancelled.workflow.id == "w1"


def test_a_workflow_handle_keeps_the_answer_of_the_submit() -> None:
    wf = handles.WorkflowHandle(Client("http://api.test", transport=api(TASK)), Workflow("w1", {"a": "t1"}))
    assert (wf.id, wf.workflow_id, wf.task_ids) == ("w1", "w1", {"a": "t1"}) and wf.workflow.tasks == {"a": "t1"}


# ------------------------------------------------------------ a deadline on a stream


def test_a_stream_with_a_deadline_is_renewed_before_its_read_timeout_outlasts_it() -> None:
    soon = time.monotonic() + 5
    assert sse._timeout(soon).read <= 5
    sse._check(soon, httpx.Timeout(5.0))  # opened just now: keep reading
    with pytest.raises(sse.StreamRenew):  # opened with 10 s to go, 5 left: a heartbeat would reset it past the end
        sse._check(soon, httpx.Timeout(10.0))
    with pytest.raises(sse.StreamDeadline):
        sse._check(time.monotonic() - 0.01, httpx.Timeout(5.0))
    with pytest.raises(sse.StreamDeadline):
        sse._timeout(time.monotonic() - 0.01)
    assert sse._timeout(None) is sse.STREAM_TIMEOUT
    sse._check(None, sse.STREAM_TIMEOUT)


# ---------------------------------------------------------------- handler references


def test_handler_marks_the_function_with_its_name_and_returns_it_itself() -> None:
    registry = Registry()

    def send_email(payload, ctx):
        return "sent"

    ref = handler("mail.send", registry=registry)(send_email)
    assert ref is send_email and ref.taskstream_handler == "mail.send" and ref(None, None) == "sent"
    assert registry.get("mail.send").fn is send_email and handler_name(ref) == "mail.send"
    assert handler_name("mail.send") == "mail.send"

    class Slotted:
        __slots__ = ()

        def __call__(self, payload, ctx):
            return None

    registry.register("slotted", Slotted())  # takes no attribute: registered, but cannot stand for its name
    assert "slotted" in registry


def test_submit_takes_a_reference_and_refuses_an_unregistered_function_before_sending() -> None:
    registry = Registry()

    @handler("mail.send", registry=registry)
    def send_email(payload, ctx):
        return None

    def send_emails(payload, ctx):  # never registered
        return None

    seen: list[httpx.Request] = []
    with Client("http://api.test", transport=api(TASK, seen)) as ts:
        ts.submit(send_email, {"to": "ada"})
        assert json.loads(seen[0].content) == {"handler": "mail.send", "payload": {"to": "ada"}}
        with pytest.raises(TypeError, match="send_emails is neither"):
            ts.submit(send_emails, {"to": "ada"})
        with pytest.raises(TypeError):
            ts.submit(42)  # type: ignore[arg-type]
    assert len(seen) == 1


# ---------------------------------------------------------------- the retry policy


def test_retry_policy_is_the_one_value_and_is_sent_whole() -> None:
    from taskstream.schemas import RetryPolicy as SchemasRetryPolicy

    assert RetryPolicy is SchemasRetryPolicy
    seen: list[httpx.Request] = []
    with Client("http://api.test", transport=api(TASK, seen)) as ts:
        ts.submit("echo", retry=RetryPolicy(max_attempts=5, initial_s=0.5))
    assert json.loads(seen[0].content)["retry"] == {
        "max_attempts": 5, "backoff": {"initial_s": 0.5, "multiplier": 2.0, "max_s": 300.0, "jitter": 0.1}}


def test_importing_the_client_does_not_import_the_rest_of_taskstream() -> None:
    code = ("import sys, taskstream.client as c; "
            "others = [m for m in sys.modules if m.startswith('taskstream.')"
            " and not m.startswith('taskstream.client')]; "
            "assert not others, others; c.RetryPolicy; assert 'taskstream.schemas.retry' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_handles_are_equal_by_id() -> None:
    with Client("http://api.test", transport=api(TASK)) as ts:
        a, b = ts.submit("echo"), ts.submit("echo")
        assert isinstance(a, TaskHandle) and a == b and len({a, b}) == 1 and "t1" in repr(a)


# ---------------------------------------------------------------- waiting for a workflow


def workflow_api(seen: list[str], *, truncated: bool = False) -> httpx.MockTransport:
    """A workflow w1 of tasks a (t1, running until its stream says succeeded) and b (t2, succeeded)."""
    ended = {"t1": False}

    def doc() -> dict:
        a = "succeeded" if ended["t1"] else "running"
        tasks = [{"id": "t1", "key": "a", "handler": "echo", "status": a},
                 {"id": "t2", "key": "b", "handler": "echo", "status": "succeeded"}]
        return {"id": "w1", "status": "succeeded" if ended["t1"] else "running", "truncated": truncated,
                "tasks": [] if truncated else tasks, "counts": {}}

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path == "/api/v1/workflows/w1":
            return httpx.Response(200, json=doc())
        if request.url.path == "/api/v1/tasks/t1/watch":
            ended["t1"] = True
            states = [{**TASK, "id": "t1", "status": s, "workflow_id": "w1"} for s in ("running", "succeeded")]
            body = "".join(f"event: task\nid: {i}\ndata: {json.dumps(t)}\n\n" for i, t in enumerate(states))
            return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})
        if request.url.path == "/api/v1/tasks/watch":
            ended["t1"] = True
            body = 'event: position\nid: 0\ndata: {"cursor": "0"}\n\n'
            return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})
        return httpx.Response(404, json={"title": "Not found"})

    return httpx.MockTransport(handle)


def test_a_workflow_is_waited_for_on_its_unfinished_tasks_own_streams() -> None:
    seen: list[str] = []
    with Client("http://api.test", transport=workflow_api(seen)) as ts:
        run = handles.WorkflowHandle(ts, Workflow("w1", {"a": "t1", "b": "t2"})).wait(timeout=5)
    assert run.status == "succeeded"
    # not the change stream of every task (GET /tasks/watch): only the unfinished task's own, then a read
    assert seen == ["/api/v1/workflows/w1", "/api/v1/tasks/t1/watch", "/api/v1/workflows/w1"]


def test_a_workflow_read_that_shows_no_unfinished_task_is_waited_for_on_the_change_stream() -> None:
    seen: list[str] = []
    with Client("http://api.test", transport=workflow_api(seen, truncated=True)) as ts:
        run = handles.WorkflowHandle(ts, Workflow("w1", {"a": "t1", "b": "t2"})).wait(timeout=5)
    assert run.status == "succeeded" and "/api/v1/tasks/watch" in seen

    async def main() -> None:
        seen.clear()
        async with AsyncClient("http://api.test", transport=workflow_api(seen)) as ts:
            run = await handles.AsyncWorkflowHandle(ts, Workflow("w1", {"a": "t1"})).wait(timeout=5)
        assert run.status == "succeeded" and "/api/v1/tasks/t1/watch" in seen and "/api/v1/tasks/watch" not in seen
        seen.clear()
        async with AsyncClient("http://api.test", transport=workflow_api(seen, truncated=True)) as ts:
            run = await handles.AsyncWorkflowHandle(ts, Workflow("w1", {"a": "t1"})).wait(timeout=5)
        assert run.status == "succeeded" and "/api/v1/tasks/watch" in seen

    asyncio.run(main())
