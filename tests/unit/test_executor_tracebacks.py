"""A failed attempt says why: the exception's type and the handler's frames, bounded (executors/reports.py).

The attempts run through the real runner (``AttemptRunner._execute``, sync
handlers in a real thread pool, async ones on the loop, with and without a
time limit), without a broker: only what the runner hands to the report is
looked at.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest

from taskstream.executors import PermanentError, TaskContext, reports
from taskstream.executors._attempt import AttemptRunner, Handlers, _Attempt
from taskstream.executors.metrics import ExecutorMetrics
from taskstream.executors.registry import Registry
from taskstream.schemas import ReadyTask, Settings, TaskFailed, Topics, codec
from taskstream.schemas.limits import MAX_ERROR_CHARS, MAX_TRACEBACK_CHARS, MAX_TRACEBACK_FRAMES, cut_traceback

T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)


class OutOfStock(Exception):
    pass


def parse_row(row: str) -> int:
    return int(row)  # ValueError: invalid literal for int()


def deep(n: int) -> None:
    if n == 0:
        raise RuntimeError("bottom of the well")
    deep(n - 1)


registry = Registry()


@registry.handler("sync.bad")
def sync_bad(payload, ctx):
    return parse_row(payload["row"])


@registry.handler("async.bad")
async def async_bad(payload, ctx):
    await asyncio.sleep(0)
    return parse_row(payload["row"])


@registry.handler("deep")
def deep_handler(payload, ctx):
    deep(200)


@registry.handler("custom")
async def custom(payload, ctx):
    raise OutOfStock("sku 42") from KeyError("sku")


@registry.handler("permanent")
def permanent(payload, ctx):
    raise PermanentError("bad payload")


class _Running:
    def __init__(self, task: ReadyTask) -> None:
        self.task = task
        self.cancelled = False


def run(handler: str, payload: object, timeout_s: float | None) -> TaskFailed:
    async def go() -> TaskFailed:
        settings = Settings(default_timeout_s=timeout_s)
        with ThreadPoolExecutor(2) as pool:
            runner = AttemptRunner(settings, "executor-test", Topics(settings.prefix), codec.SINGLE_OBJECT,
                                   Handlers(registry, Registry()), ExecutorMetrics(), producer=None, pool=pool)
            task = ReadyTask(task_id="t1", occurred_at=T0, producer="test", attempt=1, handler=handler,
                             priority="medium", payload=codec.dumps_json(payload))
            ctx = TaskContext(task_id="t1", attempt=1, handler=handler, priority="medium")
            outcome = await runner._execute(_Attempt(delivery=_Running(task), ctx=ctx, started_at=T0))
        assert isinstance(outcome, TaskFailed)
        return outcome

    return asyncio.run(go())


@pytest.mark.parametrize("handler", ["sync.bad", "async.bad"])
@pytest.mark.parametrize("timeout_s", [None, 30.0])
def test_the_traceback_holds_the_handler_s_frames_only(handler, timeout_s):
    failed = run(handler, {"row": "x"}, timeout_s)
    assert failed.error_type == "ValueError" and failed.error.startswith("ValueError: invalid literal")
    tb = failed.traceback
    assert tb is not None and tb.startswith("Traceback (most recent call last):")
    frames = [line for line in tb.splitlines() if line.startswith('  File "')]
    # First the handler, last the helper it called; nothing of the runner, asyncio or the thread pool.
    assert frames[0].endswith(f"in {handler.replace('.', '_')}") and frames[-1].endswith("in parse_row")
    assert "_attempt.py" not in tb and "asyncio" not in tb and "concurrent" not in tb and "threading" not in tb
    assert tb.endswith("ValueError: invalid literal for int() with base 10: 'x'")


def test_a_deep_traceback_keeps_the_innermost_frames_within_the_bound():
    failed = run("deep", None, None)
    tb = failed.traceback
    assert tb is not None and len(tb) <= MAX_TRACEBACK_CHARS
    frames = [line for line in tb.splitlines() if line.startswith('  File "')]
    assert len(frames) <= MAX_TRACEBACK_FRAMES
    assert frames[-1].endswith("in deep") and "deep_handler" not in tb  # the outermost were left out
    assert tb.endswith("RuntimeError: bottom of the well")


def test_a_custom_exception_is_named_by_module_and_its_cause_is_shown():
    failed = run("custom", None, None)
    assert failed.error_type == f"{__name__}.OutOfStock" and failed.error == "OutOfStock: sku 42"
    assert failed.traceback is not None and "KeyError: 'sku'" in failed.traceback
    assert failed.traceback.endswith(f"{__name__}.OutOfStock: sku 42")


def test_a_permanent_error_carries_its_traceback_too():
    failed = run("permanent", None, None)
    assert failed.permanent and failed.error_type == "taskstream.executors.errors.PermanentError"
    assert failed.traceback is not None and "in permanent" in failed.traceback


def test_failures_the_executor_found_itself_carry_no_traceback():
    for failed in (run("nobody", None, None), reports.timed_out(_task(), "ex", T0, T0, 2.0)):
        assert failed.error_type is None and failed.traceback is None


def test_a_huge_traceback_text_is_cut_to_its_end():
    def huge() -> None:
        raise ValueError("m" * (3 * MAX_TRACEBACK_CHARS))

    try:
        huge()
    except ValueError as exc:
        tb = reports.handler_traceback(exc)
    # The message is cut as ``error`` is (its start kept), so the frames above it stay.
    assert len(tb) <= MAX_TRACEBACK_CHARS and tb.startswith("Traceback (most recent call last):")
    assert "in huge" in tb and "ValueError: mmmm" in tb and tb.endswith(f"characters > {MAX_ERROR_CHARS:,}]")
    assert cut_traceback("short") == "short"
    long = "".join(f"line {i}\n" for i in range(5000))
    cut = cut_traceback(long)
    assert len(cut) <= MAX_TRACEBACK_CHARS and cut.startswith("[cut: ") and cut.endswith("line 4999\n")
    assert cut.splitlines()[1].startswith("line ")  # from a line's start


def _task() -> ReadyTask:
    return ReadyTask(task_id="t1", occurred_at=T0, producer="test", attempt=1, handler="h", priority="low",
                     payload="null")
