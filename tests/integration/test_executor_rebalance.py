"""Executor: a partition paused for backpressure, revoked and assigned back, flows again (issue 25, item 1).

librdkafka keeps a partition's pause across its revocation and reassignment;
an intake that forgets it paused the partition would never resume it, and
the tasks on it would wait for ever while the group looks stable.
"""

from __future__ import annotations

import threading

import pytest

from taskstream.executors import Registry
from taskstream.schemas import Topics
from taskstream.schemas.kafka import consumer as kafka_consumer
from tests.conftest import wait_until
from tests.integration.test_executor import JOIN_TIMEOUT, Feeder, committed, events, ready, running  # noqa: F401

pytestmark = pytest.mark.integration

PER_PRIORITY = 60  # more than one buffer's worth (32 at concurrency 1), so every level pauses


def test_a_paused_partition_that_comes_back_is_resumed(settings, events):  # noqa: F811 (the fixture imported above)
    gate = threading.Event()
    reg = Registry()

    @reg.handler("gate")
    def wait_for_gate(payload, ctx):
        gate.wait(60)
        return payload

    feeder = Feeder(settings)
    tasks = feeder.send(*(ready("gate", i, priority=p) for p in ("high", "medium", "low") for i in range(PER_PRIORITY)))
    with running(settings, reg, concurrency=1, executor_id="exec-a") as ex:
        assert ex.assigned_event.wait(JOIN_TIMEOUT)
        everything = set(feeder.positions)
        wait_until(lambda: ex.consumer.assignment() == everything and set(ex.consumer.paused) == everything,
                   timeout=JOIN_TIMEOUT, message="every partition paused behind full buffers")

        # A second member joins the group and takes some partitions, then leaves: they come back to exec-a.
        other = kafka_consumer(settings, "intruder", Topics(settings.prefix).executor_group)
        try:
            other.subscribe(Topics(settings.prefix).all_ready)
            wait_until(lambda: other.poll(0.05) is None and other.assignment(), timeout=JOIN_TIMEOUT,
                       message="the second member got partitions")
            moved = {(tp.topic, tp.partition) for tp in other.assignment()}
            wait_until(lambda: not ex.consumer.assignment() & moved, timeout=JOIN_TIMEOUT,
                       message="exec-a gave them up")
        finally:
            other.close()
        wait_until(lambda: ex.consumer.assignment() == everything, timeout=JOIN_TIMEOUT, message="exec-a got them back")

        gate.set()
        events.wait_for([t.task_id for t in tasks], timeout=45)
        wait_until(lambda: committed(settings) == feeder.positions, message="every offset committed")
        assert set(ex.consumer.paused) == set()
