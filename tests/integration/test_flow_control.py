"""Concurrency keys end to end on the real broker (issue 28): a key's limit holds across partitions and retries.

Processor (with its retry relay) and an executor with room for 8 attempts run
as `taskstream` processes with the test's prefix; 50 tasks with one key and
limit 2 are written straight to ``<p>.events`` (they land in every partition,
the key's slots in one). The handler records when each attempt starts and
ends; every fifth task fails its first attempt (a slot freed while it waits
for its retry, asked for again after). No instant may see more than 2
attempts between their start and end, all 50 succeed, and ``state rebuild
--verify`` finds the live tables, the key's slots included, equal to a fold
of the log.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from taskstream.schemas import SlotGranted, TaskCreated, TaskRetryScheduled, TaskSucceeded, Topics, codec, new_id
from taskstream.streams.rebuild import rebuild
from tests.conftest import wait_until
from tests.integration.test_dag import ComponentIn
from tests.kafka_helpers import TopicReader, send_events, stop_all

pytestmark = [pytest.mark.integration]

HANDLERS = '''
import asyncio, time
from taskstream.executors import handler

@handler("flow.record")
async def record(payload, ctx):
    with open(payload["log"], "a") as f:
        f.write(f"{ctx.task_id} {ctx.attempt} start {time.time()}\\n")
    await asyncio.sleep(0.1)
    with open(payload["log"], "a") as f:
        f.write(f"{ctx.task_id} {ctx.attempt} end {time.time()}\\n")
    if payload["fail_first"] and ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return {"attempt": ctx.attempt}
'''

TASKS = 50
LIMIT = 2


def _most_at_once(lines: list[str]) -> int:
    """The most attempts between their start and end at any instant (an end before a start at the same time)."""
    points = []
    for line in lines:
        _, _, kind, at = line.split()
        points.append((float(at), 0 if kind == "end" else 1))
    now = most = 0
    for _, kind in sorted(points):
        now += 1 if kind else -1
        most = max(most, now)
    return most


def test_fifty_tasks_of_one_key_with_limit_two_never_run_more_than_two_at_once(settings, tmp_path):
    (tmp_path / "flow_handlers.py").write_text(HANDLERS)
    log = tmp_path / "attempts.log"
    proc = ComponentIn(settings, "processor", cwd=tmp_path, log_path=tmp_path / "processor.log")
    ex = ComponentIn(settings, "executor", "--handlers", "flow_handlers", "--concurrency", "8", cwd=tmp_path,
                     log_path=tmp_path / "executor.log")
    events = TopicReader(settings, Topics(settings.prefix).events)
    tasks = [TaskCreated(task_id=new_id(), occurred_at=datetime.now(UTC), producer="test", handler="flow.record",
                         payload=codec.dumps_json({"log": str(log), "fail_first": i % 5 == 0}), max_attempts=2,
                         backoff_initial_s=0.2, backoff_jitter=0.0, concurrency_key="customer-acme",
                         concurrency_limit=LIMIT)
             for i in range(TASKS)]
    try:
        send_events(settings, tasks)

        def done(_):
            return len({e.task_id for e in events.values() if isinstance(e, TaskSucceeded)}) == TASKS

        events.until(done, timeout=120, message=f"{TASKS} tasks of one key succeeded")
        lines = log.read_text().splitlines()
        assert len(lines) == 2 * (TASKS + TASKS // 5)  # every attempt started and ended once
        assert _most_at_once(lines) <= LIMIT, lines
        assert _most_at_once(lines) == LIMIT  # and the limit was used, not undercut
        seen = events.values()
        assert len([e for e in seen if isinstance(e, TaskRetryScheduled)]) == TASKS // 5
        assert {e.gate_id for e in seen if isinstance(e, SlotGranted)} == {"concurrency:customer-acme"}
        assert len({(e.task_id, e.attempt) for e in seen if isinstance(e, SlotGranted)}) == TASKS + TASKS // 5
        # the live tables (the key's slots included) equal a fold of the log, once the last release is folded
        report = wait_until(lambda: (r := rebuild(settings, verify=True)).mismatches == [] and r, timeout=30,
                            interval=1.0, message="state rebuild --verify without a mismatch")
        assert report.tasks >= TASKS
    finally:
        events.close()
        stop_all(ex, proc)
