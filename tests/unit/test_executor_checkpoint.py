"""``ctx.last_checkpoint`` decoding, ``ctx.checkpoint`` outside an executor, and an attempt run without a broker."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from taskstream.executors import TaskContext
from taskstream.executors._attempt import AttemptRunner, Handlers, _Attempt, _decode_checkpoint
from taskstream.executors.context import MAX_CHECKPOINT_BYTES
from taskstream.executors.metrics import ExecutorMetrics
from taskstream.executors.registry import Registry
from taskstream.schemas import ReadyTask, Settings, TaskFailed, Topics, codec


def ready(last_checkpoint: str | None) -> ReadyTask:
    return ReadyTask(task_id="t1", occurred_at=datetime.now(UTC), producer="test", attempt=2,
                     handler="noop", priority="medium", payload="null", last_checkpoint=last_checkpoint)


@pytest.mark.parametrize("text, value", [
    ('{"rows": 10}', {"rows": 10}),
    ("[1, 2]", [1, 2]),
    ('"a string"', "a string"),
    ("0", 0),
    ("null", None),
])
def test_json_checkpoints_decode(text, value):
    assert _decode_checkpoint(ready(text)) == value


def test_absent_checkpoint_is_none_without_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert _decode_checkpoint(ready(None)) is None
    assert caplog.records == []


def test_garbled_checkpoint_is_none_and_logged(caplog):
    with caplog.at_level(logging.WARNING):
        assert _decode_checkpoint(ready("{nope")) is None
    [record] = caplog.records
    assert "t1" in record.getMessage() and "not JSON" in record.getMessage()


def test_context_without_an_executor_refuses_checkpoints():
    ctx = TaskContext(task_id="t", attempt=1, handler="h", priority="low")
    assert ctx.last_checkpoint is None
    with pytest.raises(RuntimeError, match="not attached"):
        ctx.checkpoint({"a": 1})


def test_limit_is_256_kib():
    assert MAX_CHECKPOINT_BYTES == 262144


class _Running:
    """A delivery that is neither cancelled nor settled: all ``_execute`` asks of one."""

    def __init__(self, task: ReadyTask) -> None:
        self.task = task
        self.cancelled = False


def test_a_handlers_own_timeout_error_without_a_time_limit_is_its_failure_not_a_timeout():
    """With no time limit the executor never times an attempt out: a TimeoutError is the handler's own error."""
    registry = Registry()

    @registry.handler("gives.up")
    async def gives_up(payload, ctx):
        raise TimeoutError("upstream did not answer")

    async def run() -> TaskFailed:
        settings = Settings(default_timeout_s=None)
        runner = AttemptRunner(settings, "executor-test", Topics(settings.prefix), codec.SINGLE_OBJECT,
                               Handlers(registry, Registry()), ExecutorMetrics(), producer=None, pool=None)
        task = replace(ready(None), handler="gives.up")
        ctx = TaskContext(task_id=task.task_id, attempt=task.attempt, handler=task.handler, priority=task.priority)
        return await runner._execute(_Attempt(delivery=_Running(task), ctx=ctx, started_at=datetime.now(UTC)))

    outcome = asyncio.run(run())
    assert isinstance(outcome, TaskFailed)
    assert outcome.error == "TimeoutError: upstream did not answer" and not outcome.permanent
