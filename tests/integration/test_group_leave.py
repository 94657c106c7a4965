"""A member stopped (SIGTERM) while its first group join is still in progress must not block the next member.

Found by the model test of issue 6: on the embedded broker a LeaveGroup sent
during a pending join left the group unable to complete any later join (the
next processor had no partitions after 400 s). ``close_member`` lets the
join finish before leaving; these tests stop a processor / an executor right
after it starts joining (a join takes about half the session timeout, ~3 s)
and check that it exits cleanly and that the next one gets to work.
"""

from __future__ import annotations

import pytest

from taskstream.schemas import TaskCreated, new_id
from tests.conftest import wait_until
from tests.integration.test_dag import StateTable
from tests.kafka_helpers import Component, now, send_events

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _started_joining(log_path, marker: str) -> None:
    wait_until(lambda: marker in log_path.read_text(errors="replace"), timeout=30, message=f"{marker!r} in {log_path}")


@pytest.mark.parametrize("role, marker", [("processor", "joining group"), ("executor", "starting:")])
def test_a_member_stopped_while_joining_does_not_block_the_next(settings, tmp_path, role, marker):
    settings = settings.model_copy(update={"log_level": "INFO"})
    other_role = "executor" if role == "processor" else "processor"
    other = Component(settings, other_role, log_path=tmp_path / f"{other_role}.log")
    first = Component(settings, role, log_path=tmp_path / f"{role}-1.log")
    second = None
    table = StateTable(settings)
    try:
        _started_joining(tmp_path / f"{role}-1.log", marker)
        code = first.stop()
        assert code == 0, f"{role} exited with {code} after SIGTERM during its join"
        log = (tmp_path / f"{role}-1.log").read_text(errors="replace")
        assert "assigned" in log, f"the stopped {role} left before its join finished:\n{log[-2000:]}"

        second = Component(settings, role, log_path=tmp_path / f"{role}-2.log")
        task = TaskCreated(task_id=new_id(), occurred_at=now(), producer="test", handler="noop")
        send_events(settings, [task])
        # Before the fix the group never completed another join on the embedded broker (> 400 s);
        # a normal join plus a rebalance takes ~11 s here.
        table.until(lambda s: task.task_id in s and s[task.task_id].status == "succeeded", timeout=40,
                    message=f"a task run after the {role} restart", procs=(other, second))
    finally:
        table.close()
        for c in (second, first, other):
            if c is not None:
                c.stop()
