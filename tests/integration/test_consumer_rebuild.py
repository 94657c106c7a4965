"""A processor whose consumer hits a fatal error rebuilds it and goes on processing (issue 25, item 2).

Two processors (subprocesses, each with its own data directory) are given one
static ``processor_instance_id``, which an operator must never do. Under the
classic protocol the second one fences the first (a fatal FENCED_INSTANCE_ID
for its consumer); under the consumer protocol the second is refused (a fatal
UNRELEASED_INSTANCE_ID). The processor left without the id loses its
partitions, rebuilds its consumer and waits; once the other one stops and its
session ends, it joins again and tasks keep running, without a restart.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from taskstream.schemas import Settings, TaskCreated, codec, new_id
from tests.conftest import wait_until
from tests.integration.test_dag import StateTable
from tests.kafka_helpers import Component, send_events, stop_all

pytestmark = [pytest.mark.integration]

WAITING = "instance id static-processor is held by another member"
REBUILT = "rebuilt its consumer after a fatal error"


def noop() -> TaskCreated:
    return TaskCreated(task_id=new_id(), occurred_at=datetime.now(UTC), producer="test", handler="noop",
                       payload=codec.dumps_json(None))


def logged(path, text: str) -> bool:
    try:
        return text in path.read_text(errors="replace")
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_a_processor_without_its_instance_id_rejoins_once_the_other_leaves(settings: Settings, tmp_path,
                                                                            protocol: str) -> None:
    settings = settings.model_copy(update={"group_protocol": protocol, "processor_instance_id": "static-processor"})
    logs = {name: tmp_path / f"{name}.log" for name in ("a", "b", "executor")}
    table = StateTable(settings)

    def processor(name: str) -> Component:
        return Component(settings.model_copy(update={"data_dir": tmp_path / name}), "processor",
                         log_path=logs[name])

    def succeeded(tasks: list[TaskCreated], what: str, procs) -> None:
        send_events(settings, tasks)
        table.until(lambda s: all(s.get(t.task_id) and s[t.task_id].status == "succeeded" for t in tasks),
                    timeout=60, message=what, procs=procs)

    a = processor("a")
    executor = Component(settings, "executor", log_path=logs["executor"])
    b = None
    try:
        succeeded([noop()], "a task processed by A", (a, executor))
        b = processor("b")
        # Classic: B fences A, which waits for the id. Consumer protocol: B is refused and waits; A goes on.
        holder, waiting, waiting_log = (b, a, logs["a"]) if protocol == "classic" else (a, b, logs["b"])
        wait_until(lambda: logged(waiting_log, WAITING), timeout=60, message="a processor waiting for the id")
        succeeded([noop() for _ in range(5)], "tasks processed by the holder of the id", (a, b, executor))
        stopped_at = time.monotonic()
        assert holder.stop() == 0
        wait_until(lambda: logged(waiting_log, REBUILT), timeout=60, message="the waiting processor rebuilt")
        rejoined_s = time.monotonic() - stopped_at
        succeeded([noop() for _ in range(5)], "tasks processed by the processor that waited", (waiting, executor))
        print(f"\n{protocol}: the waiting processor rejoined {rejoined_s:.1f}s after the holder's stop")
    finally:
        table.close()
        stop_all(executor, a, b)
