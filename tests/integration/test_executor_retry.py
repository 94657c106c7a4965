"""A handler asks for its next delay (``raise Retry(delay_s=...)``), end to end on the real broker (issue 23).

Processor (with its retry relay) and executor run as `taskstream` processes
with the test's prefix; tasks are written straight to ``<p>.events`` and the
outcome is read back from there. The tasks' own policies would wait 30 s, so
an attempt that comes back after about the requested delay shows the request
was honoured; one that asks for more than the policy's ``max_s`` waits
``max_s``; one that asks on its last attempt fails for good.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from taskstream.schemas import (
    TaskCreated,
    TaskDeadLettered,
    TaskFailed,
    TaskRetryScheduled,
    TaskSucceeded,
    Topics,
    codec,
    new_id,
)
from tests.integration.test_dag import ComponentIn
from tests.kafka_helpers import TopicReader, send_events, stop_all

pytestmark = [pytest.mark.integration]

HANDLERS = '''
from taskstream.executors import Retry, handler

@handler("r.later")
async def later(payload, ctx):
    if ctx.attempt == 1:
        raise Retry("the service said: come back later", delay_s=payload["delay_s"])
    return {"attempt": ctx.attempt}
'''

#: Most an attempt may start after its wait ends on a loaded 2-core machine: the relay's re-queue, then two
#: broker hops (processor, executor); far below the 30 s the tasks' own backoff would wait.
SLACK_S = 2.0


def task(delay_s: float, **policy) -> TaskCreated:
    fields = dict(max_attempts=2, backoff_initial_s=30.0, backoff_multiplier=2.0, backoff_max_s=60.0,
                  backoff_jitter=0.0)
    return TaskCreated(task_id=new_id(), occurred_at=datetime.now(UTC), producer="test", handler="r.later",
                       payload=codec.dumps_json({"delay_s": delay_s}), **{**fields, **policy})


def test_a_handler_that_raises_retry_comes_back_after_the_delay_it_asked_for(settings, tmp_path):
    (tmp_path / "retry_handlers.py").write_text(HANDLERS)
    proc = ComponentIn(settings, "processor", cwd=tmp_path, log_path=tmp_path / "processor.log")
    ex = ComponentIn(settings, "executor", "--handlers", "retry_handlers", cwd=tmp_path,
                     log_path=tmp_path / "executor.log")
    events = TopicReader(settings, Topics(settings.prefix).events)
    asked = task(1.0)                        # within the policy: exactly 1 s
    capped = task(600.0, backoff_max_s=1.5)  # more than max_s: 1.5 s
    last = task(1.0, max_attempts=1)         # no attempt left: fails for good, whatever it asked
    try:
        send_events(settings, [asked, capped, last])

        def done(_):
            seen = events.values()
            ok = {e.task_id for e in seen if isinstance(e, TaskSucceeded)}
            dead = {e.task_id for e in seen if isinstance(e, TaskDeadLettered)}
            return asked.task_id in ok and capped.task_id in ok and last.task_id in dead

        events.until(done, timeout=60, message="two retried tasks succeeded and one dead-lettered")
        seen = events.values()
        failed = {e.task_id: e for e in seen if isinstance(e, TaskFailed)}
        waits = {e.task_id: e for e in seen if isinstance(e, TaskRetryScheduled)}
        second = {e.task_id: e.started_at for e in seen if isinstance(e, TaskSucceeded) and e.attempt == 2}

        assert failed[asked.task_id].retry_delay_s == 1.0 and not failed[asked.task_id].permanent
        assert failed[asked.task_id].error == "Retry: the service said: come back later"
        assert failed[capped.task_id].retry_delay_s == 600.0
        assert waits[asked.task_id].delay_s == 1.0 and waits[capped.task_id].delay_s == 1.5
        for t, want in ((asked, 1.0), (capped, 1.5)):
            gap = (second[t.task_id] - failed[t.task_id].occurred_at).total_seconds()
            assert want - 0.01 <= gap <= want + SLACK_S, (t.task_id, want, gap)
        assert last.task_id not in waits and failed[last.task_id].retry_delay_s == 1.0
    finally:
        events.close()
        stop_all(ex, proc)
