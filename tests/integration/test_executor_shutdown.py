"""Graceful shutdown of a real ``taskstream executor`` process (console script, SIGTERM).

On SIGTERM the executor stops taking work, lets in-flight attempts finish for
``shutdown_grace_s`` and reports them, leaves the group and exits; an attempt
still running after the grace period is neither reported nor committed, so the
next executor of the group runs it again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taskstream.cli.dev import settings_env
from taskstream.schemas import Settings, TaskFailed, TaskStarted, TaskSucceeded
from tests.conftest import wait_until
from tests.integration.test_executor import JOIN_TIMEOUT, EventLog, Feeder, ready

pytestmark = pytest.mark.integration

CONSOLE_SCRIPT = Path(sys.executable).with_name("taskstream")
GRACE_S = 2.5


#: Handlers of the test: how long they run comes from the environment, so the
#: same attempt outlives the grace period in the first executor and is quick
#: in the second. ``shutdown.block`` ignores ``ctx.cancelled`` on purpose: a
#: sync handler cannot be killed, and must not keep the process from exiting.
HANDLERS = """
import asyncio, os, time
from taskstream.executors import handler

@handler("shutdown.block")
def block(payload, ctx):
    time.sleep(float(os.environ["TEST_RUN_S"]))
    return "blocked"

@handler("shutdown.nap")
async def nap(payload, ctx):
    await asyncio.sleep(float(os.environ["TEST_RUN_S"]))
    return "napped"
"""


class ExecutorProcess:
    """``taskstream executor --handlers shutdown_handlers`` with ``settings`` in its environment, its log in a file."""

    def __init__(self, settings: Settings, log_path: Path, run_s: float) -> None:
        self.log_path = log_path
        (log_path.parent / "shutdown_handlers.py").write_text(HANDLERS)
        env = {**os.environ, **settings_env(settings), "TEST_RUN_S": str(run_s),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(log_path.parent), os.environ.get("PYTHONPATH")]))}
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [str(CONSOLE_SCRIPT), "executor", "--concurrency", "4", "--handlers", "shutdown_handlers"],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.mark.skipif(not CONSOLE_SCRIPT.exists(), reason="the taskstream console script is not installed in this venv")
def test_sigterm_reports_the_short_attempt_and_the_long_ones_run_on_the_next_executor(settings, tmp_path):
    s = settings.model_copy(update={"shutdown_grace_s": GRACE_S, "started_event_after_s": 0.2})
    events = EventLog(s)
    feeder = Feeder(s)
    short, *longs = feeder.send(ready("sleep", {"seconds": 1.5}), ready("shutdown.block"), ready("shutdown.nap"))
    first = ExecutorProcess(s, tmp_path / "first.log", run_s=60)
    second = None
    try:
        def all_started():
            evs = events.events()
            started = {e.task_id: e.producer for e in evs if isinstance(e, TaskStarted)}
            return all(t.task_id in started for t in (short, *longs)) and started

        started = wait_until(
            all_started, timeout=JOIN_TIMEOUT + 5, message="all attempts running in the first executor"
        )
        first_id = started[short.task_id]
        assert {started[t.task_id] for t in longs} == {first_id}

        signalled = time.monotonic()
        first.proc.send_signal(signal.SIGTERM)
        try:
            code = first.proc.wait(GRACE_S + 5)
        except subprocess.TimeoutExpired:
            pytest.fail(f"executor still running {GRACE_S + 5}s after SIGTERM:\n{first.log()}")
        took = time.monotonic() - signalled
        assert code == 0, first.log()
        assert took >= 1.0  # it waited for the short attempt (1.5 s) rather than dropping it

        # The short attempt finished within the grace period and reported; the long ones did not.
        by_first = [e for e in events.events() if e.producer == first_id]
        short_results = [e for e in by_first if e.task_id == short.task_id and isinstance(e, TaskSucceeded)]
        assert len(short_results) == 1, by_first
        for t in longs:
            assert [type(e) for e in by_first if e.task_id == t.task_id] == [TaskStarted]

        second = ExecutorProcess(s, tmp_path / "second.log", run_s=0.5)

        def long_results():
            evs = [e for e in events.events() if e.task_id in {t.task_id for t in longs}]
            results = {e.task_id: e for e in evs if isinstance(e, (TaskSucceeded, TaskFailed))}
            return len(results) == len(longs) and results

        results = wait_until(long_results, timeout=JOIN_TIMEOUT + 10, message="the long attempts' results")
        for t, expected in zip(longs, ("blocked", "napped"), strict=True):
            result = results[t.task_id]
            assert isinstance(result, TaskSucceeded) and result.producer != first_id, result
            assert result.attempt == t.attempt and result.result == f'"{expected}"'
        print(f"SIGTERM → exit in {took:.1f}s (grace {GRACE_S}s); long attempts re-run by {result.producer}")
    finally:
        first.kill()
        if second is not None:
            second.kill()
        events.close()
