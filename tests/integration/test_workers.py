"""``GET /api/v1/workers`` on the real broker: executors report themselves to ``<p>.workers`` (issue 26 item 3).

Two ``taskstream executor`` processes (their own handler module for one of
them) and the API in-process: both appear with their handlers, concurrency
and the ready partitions each holds (together every one, none twice), a long
attempt shows among the tasks in flight; the one SIGKILLed shows as ``gone``
within three of its report intervals and the survivor reports the partitions
it took over; a clean stop (SIGTERM) removes the survivor at once, by its
tombstone, where staleness would only have turned it ``gone``. The Python
client and gRPC ``ListWorkers`` answer the same; the CLI's table is tested
in ``tests/unit/test_workers.py``.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import pytest
from fastapi.testclient import TestClient

from taskstream.api.app import create_app
from taskstream.cli.broker import free_port
from taskstream.client import Client
from taskstream.grpc.v1 import workers_pb2, workers_pb2_grpc
from taskstream.schemas import Topics, catalogue
from taskstream.schemas.kafka import admin, topic_configs
from tests.conftest import wait_until
from tests.integration.test_executor import Feeder, ready
from tests.kafka_helpers import Component, stop_all

pytestmark = pytest.mark.integration

HANDLERS = """
from taskstream.executors import handler

@handler("workers.only_here")
def only_here(payload, ctx):
    return "here"
"""
INTERVAL_S = 0.5


def listed(c: TestClient, **params) -> dict[str, dict]:
    r = c.get("/api/v1/workers", params=params)
    assert r.status_code == 200, r.text
    return {w["id"]: w for w in r.json()["workers"]}


def test_two_executors_appear_a_killed_one_is_gone_and_a_stopped_one_is_removed(settings, tmp_path: Path,
                                                                                 monkeypatch) -> None:
    s = settings.model_copy(update={"worker_report_interval_s": INTERVAL_S, "shutdown_grace_s": 1.0,
                                    "grpc_port": free_port()})
    (tmp_path / "wk_handlers.py").write_text(HANDLERS)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    topics = Topics(s.prefix)
    every_partition = {(t, p) for t in topics.all_ready for p in range(s.partitions)}
    spec = next(t for t in catalogue(s) if t.name == topics.workers)
    configs = topic_configs(admin(s), [topics.workers], 10)[topics.workers]
    assert {k: configs[k] for k in spec.config} == spec.config  # created as the catalogue says
    a = b = None
    try:
        a = Component(s, "executor", "--concurrency", "3", "--handlers", "wk_handlers", log_path=tmp_path / "a.log")
        b = Component(s, "executor", "--concurrency", "2", log_path=tmp_path / "b.log")
        with TestClient(create_app(s)) as c:
            def both_settled():
                ws = listed(c)
                if len(ws) != 2 or any(w["status"] != "alive" or not w["partitions"] for w in ws.values()):
                    return None  # (the first to join holds everything until the second has joined)
                held = [(p["topic"], p["partition"]) for w in ws.values() for p in w["partitions"]]
                return ws if sorted(held) == sorted(every_partition) else None

            ws = wait_until(both_settled, timeout=60, interval=0.2, message="two executors holding every partition")
            by_pid = {w["pid"]: w for w in ws.values()}
            wa, wb = by_pid[a.proc.pid], by_pid[b.proc.pid]
            assert "workers.only_here" in wa["handlers"] and "workers.only_here" not in wb["handlers"]
            assert {"noop", "sleep", "echo"} <= set(wa["handlers"]) & set(wb["handlers"])
            assert (wa["concurrency"], wb["concurrency"]) == (3, 2)
            assert wa["report_interval_s"] == INTERVAL_S and wa["gone_after_s"] == 3 * INTERVAL_S
            assert wa["host"] and wa["started_at"] <= wa["last_seen"]
            # the same through the Python client, the CLI and gRPC
            with Client("http://testserver", transport=c._transport) as client:
                assert {(w.id, w.pid, w.concurrency) for w in client.workers()} == \
                    {(w["id"], w["pid"], w["concurrency"]) for w in ws.values()}
                assert all(isinstance(p, tuple) for w in client.workers(status="alive") for p in w.partitions)
            with grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as channel:
                reply = workers_pb2_grpc.WorkerServiceStub(channel).ListWorkers(workers_pb2.ListWorkersRequest(),
                                                                                timeout=10)
                assert {w.id: (w.status, w.concurrency, "workers.only_here" in w.handlers) for w in reply.workers} \
                    == {wa["id"]: ("alive", 3, True), wb["id"]: ("alive", 2, False)}
                assert reply.gone_after_intervals == 3 and reply.loaded
                with pytest.raises(grpc.RpcError) as refused:
                    workers_pb2_grpc.WorkerServiceStub(channel).ListWorkers(
                        workers_pb2.ListWorkersRequest(status="asleep"), timeout=10)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

            feeder = Feeder(s)
            long = ready("sleep", {"seconds": 30})
            feeder.send(long)
            runner = wait_until(lambda: next((w for w in listed(c).values() if long.task_id in w["running"]), None),
                                timeout=20, interval=0.2, message="the long attempt among the tasks in flight")
            assert runner["in_flight"] >= 1

            a.kill()
            killed = time.monotonic()
            gone = wait_until(lambda: (w := listed(c).get(wa["id"])) and w["status"] == "gone" and w,
                              timeout=30, interval=0.1, message="the killed executor shown as gone")
            assert time.monotonic() - killed <= wa["gone_after_s"] + 2.0, "gone within three report intervals"
            assert listed(c, status="gone").keys() == {wa["id"]}
            assert wb["id"] in listed(c, status="alive")
            # the survivor takes over the killed one's partitions (after its session timeout) and says so
            wait_until(lambda: {(p["topic"], p["partition"]) for p in listed(c)[wb["id"]]["partitions"]}
                       == every_partition, timeout=30, interval=0.2, message="the survivor holds every partition")
            assert gone["last_seen"] <= listed(c)[wb["id"]]["last_seen"]

            b.signal(signal.SIGTERM)
            assert b.proc.wait(30) == 0
            # a clean stop leaves a tombstone: no longer listed (staleness alone would show it gone for an hour)
            wait_until(lambda: wb["id"] not in listed(c), timeout=10, interval=0.1, message="the stopped one removed")
            assert listed(c).keys() == {wa["id"]}  # the killed one stays (gone) until the forget bound
            r = c.get("/api/v1/workers", params={"status": "asleep"})
            assert r.status_code == 422
            assert c.head("/api/v1/workers").status_code == 200
    finally:
        stop_all(a, b)
