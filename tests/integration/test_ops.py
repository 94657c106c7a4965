"""``/api/v1/stats``, ``/api/v1/cluster`` and ``/readyz`` on real brokers (issue 7, item 2).

Stats and cluster run against one cluster for the module: a processor and,
from the middle of the stats test on, two executors (subprocesses), with the
API in-process. The ``/readyz`` outage test starts a broker of its own on a
free port, stops it and starts a new one on the same port (memory-only: the
topics are created again), so the module's broker is never touched.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from taskstream.api.app import create_app
from taskstream.cli.broker import KafkaBroker, free_port
from taskstream.schemas import Settings, Topics, catalogue
from taskstream.schemas.kafka import ensure_topics, wait_for_broker
from tests.conftest import SESSION_TIMEOUT_MS, wait_until
from tests.kafka_helpers import Component, producer, stop_all

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


# ------------------------------------------------------------------ readyz


def test_readyz_503_while_its_broker_is_down_and_200_when_it_is_back(tmp_path) -> None:
    port = free_port()
    broker = KafkaBroker(port, tmp_path / "kafka").start()
    s = Settings(bootstrap_servers=broker.bootstrap_servers, prefix="tready", partitions=1,
                 data_dir=tmp_path / "data")
    try:
        wait_for_broker(s)
        assert ensure_topics(s, catalogue(s)) == []
        with TestClient(create_app(s)) as c:
            wait_until(lambda: c.get("/readyz").status_code == 200, timeout=15, message="ready")
            broker.stop()
            stopped = time.monotonic()
            # (a 503 for another reason may come first: answers cached before the stop still say "ok" for 1 s)
            r = wait_until(lambda: (r := c.get("/readyz")).status_code == 503 and r.json()["checks"]["broker"]
                           == "unknown" and r, timeout=10, message="503 with the broker stopped")
            down_after = time.monotonic() - stopped
            assert r.headers["content-type"] == PROBLEM
            body = r.json()
            assert body["checks"]["broker"] == "unknown"
            assert any(reason.startswith(f"broker unreachable at 127.0.0.1:{port}") for reason in body["reasons"])
            assert "broker unreachable" in body["detail"]
            t = time.monotonic()
            assert c.get("/readyz").status_code == 503
            assert time.monotonic() - t < 3, "an unreachable broker must cost a bounded time"
            assert c.get("/healthz").status_code == 200
            r = c.get("/api/v1/cluster")
            assert r.status_code == 503 and r.headers["content-type"] == PROBLEM
            assert r.json()["detail"].startswith(f"the broker at 127.0.0.1:{port} did not answer")
            r = c.get("/api/v1/stats")  # what the read model knows still answers
            assert r.status_code == 200 and r.json()["queue_depth"] is None and r.json()["tasks"]["total"] == 0
            assert r.json()["errors"][0].startswith(f"queue depth: broker at 127.0.0.1:{port} did not answer")

            broker.start()  # the same port and log directory: the topics are still there
            restarted = time.monotonic()
            wait_for_broker(s)
            assert ensure_topics(s, catalogue(s)) == []
            wait_until(lambda: c.get("/readyz").status_code == 200, timeout=30, message="ready again")
            back_after = time.monotonic() - restarted
            assert c.get("/readyz").json()["checks"] == {"broker": "ok", "topics": "ok", "read_model": "ok",
                                                         "producer": "ok"}
            print(f"\n/readyz: 503 {down_after:.2f}s after the broker stopped, 200 {back_after:.2f}s after it "
                  f"started again")
    finally:
        broker.kill()


def test_readyz_503_while_the_read_model_is_behind(settings: Settings) -> None:
    s = settings.model_copy(update={"ready_max_read_model_lag": 5})
    with TestClient(create_app(s)) as c:
        wait_until(lambda: c.get("/readyz").status_code == 200, message="ready")
        read_model = c.app.state.context.read_model
        read_model.stop()  # the projection stops reading <p>.state; the API still answers
        p = producer(s)
        topic = Topics(s.prefix).state
        for i in range(4):
            p.produce(topic, None, f"gone-{i}".encode())  # tombstones: records the read model has not seen
        assert p.flush(10) == 0
        # 4 behind is within the limit of 5 (end offsets are cached for a second: wait until they are seen)
        r = wait_until(lambda: (r := c.get("/readyz")).json().get("read_model_lag") == 4 and r, timeout=5,
                       message="a lag of 4")
        assert r.status_code == 200 and r.json()["checks"]["read_model"] == "ok"
        for i in range(4, 10):
            p.produce(topic, None, f"gone-{i}".encode())
        assert p.flush(10) == 0
        r = wait_until(lambda: (r := c.get("/readyz")).status_code == 503 and r, timeout=5, message="503 behind")
        assert r.json()["checks"]["read_model"] == "behind" and r.json()["read_model_lag"] == 10
        assert r.json()["reasons"] == [
            f"read model is 10 records behind {topic} (more than ready_max_read_model_lag=5)"
        ]


# ------------------------------------------------------------ stats, cluster


class Cluster:
    """A processor, an in-process API and (once asked for) two executors on one prefix."""

    def __init__(self, settings: Settings, logs) -> None:
        self.settings = settings
        self.logs = logs
        self.processor = Component(settings, "processor", log_path=logs / "processor.log")
        self.executors: list[Component] = []
        self.client = TestClient(create_app(settings))
        self.client.__enter__()

    def start_executors(self) -> None:
        if not self.executors:
            self.executors = [Component(self.settings, "executor", "--concurrency", "4",
                                        log_path=self.logs / f"executor-{i}.log") for i in range(2)]

    def submit(self, **fields) -> str:
        r = self.client.post("/api/v1/tasks", json={"handler": "sleep", **fields})
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def alive(self) -> None:
        for p in [self.processor, *self.executors]:
            assert p.proc.poll() is None, f"{p.proc.args[3:]} exited with {p.proc.returncode}"

    def stop(self) -> None:
        self.client.__exit__(None, None, None)
        stop_all(*self.executors, self.processor)


@pytest.fixture(scope="module")
def cluster(broker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ops")
    s = Settings(bootstrap_servers=broker, prefix=f"t{uuid.uuid4().hex[:10]}", partitions=3,
                 data_dir=tmp / "data", session_timeout_ms=SESSION_TIMEOUT_MS, log_level="WARNING",
                 # attempts of 1 s report TaskStarted and heartbeat, so the cluster view has heartbeats to show
                 started_event_after_s=0.1, heartbeat_interval_s=0.2)
    wait_for_broker(s)
    assert ensure_topics(s, catalogue(s)) == []
    c = Cluster(s, tmp)
    yield c
    c.stop()


def test_stats_counts_queue_depth_throughput_and_oldest_queued(cluster: Cluster) -> None:
    c = cluster.client
    first = cluster.submit(priority="high", payload={"seconds": 0.2})
    ids = [first] + [cluster.submit(priority=p, payload={"seconds": 0.2})
                     for p in ("high", "medium", "medium", "low", "low")]
    later = cluster.submit(priority="low", run_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat())

    # No executor yet: the processor queues the six, nobody takes them.
    def queued():
        cluster.alive()
        body = c.get("/api/v1/stats").json()
        return body["tasks"]["by_status"]["queued"] == 6 and body["queue_depth"] == {"high": 2, "medium": 2, "low": 2} \
            and body
    body = wait_until(queued, timeout=30, message="six tasks queued, two per ready topic")
    tasks = body["tasks"]
    assert tasks["total"] == 7
    assert tasks["by_status"]["scheduled"] == 1 and tasks["by_status"]["succeeded"] == 0
    assert tasks["by_priority"] == {"high": 2, "medium": 2, "low": 3}
    assert tasks["by_status_and_priority"]["queued"] == {"high": 2, "medium": 2, "low": 2}
    assert tasks["by_status_and_priority"]["scheduled"] == {"high": 0, "medium": 0, "low": 1}
    assert body["throughput"]["finished"] == 0
    oldest = body["oldest_queued"]
    assert oldest["task_id"] in ids and oldest["age_s"] > 0
    queued_since = parse(oldest["queued_since"])
    for tid in ids:  # it is the one queued first
        assert parse(c.get(f"/api/v1/tasks/{tid}").json()["updated_at"]) >= queued_since
    assert oldest["task_id"] != later

    cluster.start_executors()

    def done():
        cluster.alive()
        body = c.get("/api/v1/stats").json()
        return (
            body["tasks"]["by_status"]["succeeded"] == 6
            and body["queue_depth"] == {"high": 0, "medium": 0, "low": 0}
            and body
        )
    body = wait_until(done, timeout=45, message="six tasks succeeded and the executors committed")
    assert body["tasks"]["by_status"]["queued"] == 0 and body["tasks"]["by_status"]["scheduled"] == 1
    assert body["throughput"]["finished"] == 6 and body["throughput"]["by_status"] == {"succeeded": 6}
    assert body["throughput"]["window_s"] == 60 and body["throughput"]["per_second"] == 0.1
    assert body["oldest_queued"] is None
    assert body["read_model"] == {"caught_up": True} and "errors" not in body


def test_cluster_shows_brokers_topics_groups_and_executor_heartbeats(cluster: Cluster) -> None:
    cluster.start_executors()
    s = cluster.settings
    t = Topics(s.prefix)
    c = cluster.client
    for i in range(12):  # 1 s each over every ready partition: both executors run some and heartbeat
        cluster.submit(priority=("high", "medium", "low")[i % 3], payload={"seconds": 1.0})

    def two_beating():
        cluster.alive()
        body = c.get("/api/v1/cluster").json()
        return len(body["heartbeats"]) == 2 and body
    body = wait_until(two_beating, timeout=45, message="heartbeats of both executors")

    port = int(s.bootstrap_servers.rsplit(":", 1)[1])
    assert [(b["host"], b["port"]) for b in body["brokers"]] == [("127.0.0.1", port)]
    assert body["controller"] == body["brokers"][0]["id"]
    assert {x["name"]: x["partitions"] for x in body["topics"]} == {x.name: x.partitions for x in catalogue(s)}
    groups = {g["role"]: g for g in body["groups"]}
    assert [g["group"] for g in body["groups"]] == [t.processor_group, t.executor_group, t.relay_group]
    assert groups["processor"]["state"] == "stable" and groups["executors"]["state"] == "stable"
    now = datetime.now(UTC)
    executors = [h["executor"] for h in body["heartbeats"]]
    assert all(e.startswith("executor-") for e in executors) and len(set(executors)) == 2
    for h in body["heartbeats"]:
        assert now - timedelta(seconds=30) < parse(h["last_heartbeat"]) <= now + timedelta(seconds=1)
    members = groups["executors"]["members"]
    assert groups["executors"]["members_reported"]
    assert sorted(m["client_id"] for m in members) == sorted(executors)
    assigned = sorted((a["topic"], a["partition"]) for m in members for a in m["assignment"])
    assert assigned == sorted((topic, p) for topic in t.all_ready for p in range(3))
    assert all(m["last_heartbeat"] is not None for m in members)

    # Cached for a second: a burst of requests makes one round of broker calls.
    started = time.monotonic()
    for _ in range(20):
        assert c.get("/api/v1/cluster").status_code == 200
    assert time.monotonic() - started < 5
