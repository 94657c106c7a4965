"""Handles of ``taskstream.client`` against a live stack: results, failures, cancel, watch, workflows, async twins.

The executor loads ``handlehandlers`` (below) besides the built-ins; this
test process imports the same module, so its functions are the typed
references ``submit`` takes in place of handler names.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from taskstream.client import (
    AsyncClient,
    AsyncTaskHandle,
    AsyncWorkflowHandle,
    Client,
    Conflict,
    RetryPolicy,
    Task,
    TaskCancelled,
    TaskFailed,
    TaskHandle,
    UpstreamFailed,
    WaitTimeout,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowHandle,
)
from tests.integration.live_stack import LiveStack

pytestmark = pytest.mark.integration

LATER = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)

MODULE = '''\
from taskstream.executors import handler


@handler("handles.add")
def add(payload, ctx):
    """payload["n"] plus every upstream result: each dependency counts once."""
    return (payload or {}).get("n", 0) + sum(v for v in ctx.upstream.values())


@handler("handles.boom")
def boom(payload, ctx):
    raise ValueError(f"boom on attempt {ctx.attempt}")


def not_registered(payload, ctx):
    return None
'''


@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory):
    s = LiveStack(broker, tmp_path_factory.mktemp("handles"), modules={"handlehandlers": MODULE}).wait_ready()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def hh(stack):
    """The handler module the executor runs, imported here too (its functions are the typed references)."""
    spec = importlib.util.spec_from_file_location("handlehandlers", stack.folder / "handlehandlers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["handlehandlers"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("handlehandlers", None)


@pytest.fixture
def ts(stack):
    with Client(stack.url) as c:
        yield c


def test_result_waits_and_the_handle_still_reads_as_the_submitted_task(ts: Client, hh) -> None:
    job = ts.submit(hh.add, {"n": 41}, labels={"t": "handles"})
    assert isinstance(job, TaskHandle) and isinstance(job.task, Task)
    assert job.task.handler == "handles.add" and job.handler == "handles.add"  # the name the decorator gave
    assert job.labels == {"t": "handles"} and job.version >= 1 and job.raw["id"] == job.id
    assert job.result(timeout=30) == 41
    assert job.status() == "succeeded" and job.wait(timeout=5).succeeded
    assert ts.task_handle(job.id) == job and ts.task_handle(job.id).result(timeout=5) == 41
    states = list(job.watch(timeout=10))
    assert [t.status for t in states] == ["succeeded"]  # an ended task: its state, then the stream ends


def test_a_failure_raises_task_failed_with_the_error_after_the_retry_policy(ts: Client, hh) -> None:
    job = ts.submit(hh.boom, retry=RetryPolicy(max_attempts=2, initial_s=0.05, jitter=0.0))
    with pytest.raises(TaskFailed) as exc:
        job.result(timeout=30)
    failed = exc.value
    assert type(failed) is TaskFailed and failed.task.status == "failed" and failed.task.attempt == 2
    assert "boom on attempt 2" in failed.error and failed.status is None
    assert failed.task.retry["max_attempts"] == 2 and failed.task.retry["backoff"]["initial_s"] == 0.05
    # read as the API gives them: None from an API that does not record them yet
    assert failed.error_type in (None, "ValueError")
    assert failed.traceback is None or "boom on attempt 2" in failed.traceback
    assert job.status() == "failed"


def test_cancel_makes_result_raise_task_cancelled_and_a_timeout_is_kept(ts: Client) -> None:
    job = ts.submit("noop", run_at=LATER)
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout) as waited:
        job.result(timeout=0.5)
    assert 0.4 < time.monotonic() - t0 < 5 and waited.value.task.status == "scheduled"
    assert job.cancel(reason="not needed").status == "cancelled"
    with pytest.raises(TaskCancelled) as exc:
        job.result(timeout=10)
    assert exc.value.task.status == "cancelled" and "not needed" in exc.value.detail
    with pytest.raises(Conflict):
        job.cancel()


def test_watch_follows_the_task_until_it_ends(ts: Client) -> None:
    job = ts.submit("sleep", {"seconds": 0.3})
    states = [t.status for t in job.watch(timeout=30)]
    assert states[-1] == "succeeded"
    assert states == sorted(states, key=["pending", "scheduled", "queued", "running", "succeeded"].index)


def test_a_workflow_handle_gives_results_by_key_with_each_upstream_counted_once(ts: Client, hh) -> None:
    wf = ts.workflow([{"key": "a", "handler": "handles.add", "payload": {"n": 1}},
                      {"key": "b", "handler": "handles.add", "payload": {"n": 10}, "depends_on": ["a"]},
                      {"key": "c", "handler": "handles.add", "payload": {"n": 100}, "depends_on": ["a"]},
                      {"key": "d", "handler": "handles.add", "depends_on": ["b", "c"]}])
    assert isinstance(wf, WorkflowHandle) and wf.workflow_id == wf.id and set(wf.task_ids) == set("abcd")
    runs = list(wf.watch(timeout=60))
    assert runs[-1].status == "succeeded" and all(r.status == "running" for r in runs[:-1])
    # d = b + c = 11 + 101: had ctx.upstream held each result under its id and its key, d would be 224
    assert wf.result(timeout=10) == {"a": 1, "b": 11, "c": 101, "d": 112}
    assert wf.status() == "succeeded"
    tasks = wf.tasks()
    assert set(tasks) == set("abcd") and tasks["d"].result(timeout=5) == 112
    assert ts.workflow_handle(wf.id).task_ids == wf.task_ids


def test_a_failed_workflow_raises_with_each_failure_and_its_dependents_upstream_failed(ts: Client, hh) -> None:
    wf = ts.workflow([{"key": "a", "handler": "handles.boom", "retry": {"max_attempts": 1}},
                      {"key": "b", "handler": "handles.add", "depends_on": ["a"]}])
    with pytest.raises(WorkflowFailed) as exc:
        wf.result(timeout=30)
    assert exc.value.workflow.status == "failed" and [f.task.id for f in exc.value.failures] == [wf.task_ids["a"]]
    assert "boom on attempt 1" in exc.value.failures[0].error
    with pytest.raises(UpstreamFailed) as dependent:
        wf.tasks()["b"].result(timeout=10)
    assert isinstance(dependent.value, TaskFailed) and dependent.value.task.status == "upstream_failed"


def test_cancelling_a_workflow_cancels_every_task_not_ended(ts: Client) -> None:
    wf = ts.workflow([{"key": "a", "handler": "noop", "run_at": LATER.isoformat()},
                      {"key": "b", "handler": "noop", "depends_on": ["a"]}])
    with pytest.raises(WaitTimeout) as waited:
        wf.wait(timeout=0.5)
    assert waited.value.task.status == "running"
    run = wf.cancel(reason="changed my mind")
    assert run.status == "cancelled" and {t.status for t in run.tasks} == {"cancelled"}
    with pytest.raises(WorkflowCancelled):
        wf.result(timeout=10)


def test_an_unregistered_function_is_refused_before_anything_is_sent(ts: Client, hh) -> None:
    with pytest.raises(TypeError, match="registered with @handler"):
        ts.submit(hh.not_registered)
    with pytest.raises(AttributeError):  # a misspelt reference fails in Python, never as a task
        ts.submit(hh.ad)


def test_the_async_twins(stack, hh) -> None:
    async def main() -> None:
        async with AsyncClient(stack.url) as ts:
            ok, bad = await asyncio.gather(ts.submit(hh.add, {"n": 2}),
                                           ts.submit(hh.boom, retry=RetryPolicy(max_attempts=1)))
            assert isinstance(ok, AsyncTaskHandle) and ok.handler == "handles.add"
            assert await ok.result(timeout=30) == 2 and await ok.status() == "succeeded"
            with pytest.raises(TaskFailed) as exc:
                await bad.result(timeout=30)
            assert "boom on attempt 1" in exc.value.error
            later = await ts.submit("noop", run_at=LATER)
            with pytest.raises(WaitTimeout):
                await later.result(timeout=0.3)
            await later.cancel()
            with pytest.raises(TaskCancelled):
                await later.result(timeout=10)
            assert [t.status async for t in ok.watch(timeout=10)] == ["succeeded"]
            assert (await ts.task_handle(ok.id)) == ok
            wf = await ts.workflow([{"key": "x", "handler": "handles.add", "payload": {"n": 5}},
                                    {"key": "y", "handler": "handles.add", "depends_on": ["x"]}])
            assert isinstance(wf, AsyncWorkflowHandle)
            runs = [r async for r in wf.watch(timeout=60)]
            assert runs[-1].succeeded
            assert await wf.result(timeout=10) == {"x": 5, "y": 5}
            assert set(await wf.tasks()) == {"x", "y"} and await wf.status() == "succeeded"
            assert (await ts.workflow_handle(wf.id)).task_ids == wf.task_ids
            stuck = await ts.workflow([{"key": "z", "handler": "noop", "run_at": LATER.isoformat()}])
            assert (await stuck.cancel()).status == "cancelled"
            with pytest.raises(WorkflowCancelled):
                await stuck.result(timeout=10)

    asyncio.run(main())
