"""A three-node Kafka cluster (``KafkaCluster``, as `taskstream dev --brokers 3` runs it) carries taskstream, and a
task still succeeds after one node is SIGKILLed (issue 27, item 1).

The topics are made with the settings `dev --brokers 3` uses (``cluster_sizes``): three replicas and
``min.insync.replicas`` 2, checked through the factory's admin client. Processor, executor and API run as
`taskstream` subprocesses. The node killed is the leader of ``<p>.events`` partition 0, so the kill moves a
leadership the stack uses; the two left are a quorum and hold two in-sync replicas, so writes with acks=all go on.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from confluent_kafka import KafkaException

from taskstream.cli.broker import KafkaCluster, cluster_sizes, free_port
from taskstream.schemas import Settings, Topics, catalogue
from taskstream.schemas.kafka import admin, ensure_topics, topic_configs
from tests.conftest import SESSION_TIMEOUT_MS, wait_until
from tests.kafka_helpers import Component, stop_all

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def tails(logs: dict[str, Path], lines: int = 60) -> str:
    """The last ``lines`` lines of each component's log, for a failure's message."""
    out = []
    for name, path in logs.items():
        text = path.read_text(errors="replace").splitlines() if path.exists() else ["(no log)"]
        out.append(f"--- {name} log, last {lines} lines:\n" + "\n".join(text[-lines:]))
    return "\n".join(out)


@pytest.fixture
def cluster(tmp_path: Path):
    c = KafkaCluster(3, 0, tmp_path / "kafka", ports=[free_port() for _ in range(3)],
                     controller_ports=[free_port() for _ in range(3)])
    c.start(timeout=180)
    try:
        yield c
    finally:
        c.stop()


def test_three_brokers_replicate_the_topics_and_a_task_succeeds_after_one_is_killed(cluster, tmp_path) -> None:
    replicas, min_isr = cluster_sizes(3)
    assert (replicas, min_isr) == (3, 2)
    settings = Settings(bootstrap_servers=cluster.bootstrap_servers, prefix="cluster", partitions=3,
                        replication_factor=replicas, min_insync_replicas=min_isr, data_dir=tmp_path / "data",
                        session_timeout_ms=SESSION_TIMEOUT_MS, metrics_port=0, api_port=free_port(),
                        log_level="INFO")
    assert ensure_topics(settings, catalogue(settings), timeout=60) == []
    client = admin(settings)
    metadata = client.list_topics(timeout=10)
    assert len(metadata.brokers) == 3
    names = [s.name for s in catalogue(settings)]
    for name in names:
        assert {len(p.replicas) for p in metadata.topics[name].partitions.values()} == {3}, name
    assert {name: config["min.insync.replicas"] for name, config in topic_configs(client, names, 10).items()} == \
        {name: "2" for name in names}

    logs = {name: tmp_path / f"{name}.log" for name in ("processor", "executor", "api")}
    components = [Component(settings, "processor", log_path=logs["processor"]),
                  Component(settings, "executor", log_path=logs["executor"]),
                  Component(settings, "api", log_path=logs["api"])]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{settings.api_port}", timeout=10) as http:
            def ready() -> bool:
                try:
                    return http.get("/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            def run_task(seconds: float, timeout: float) -> None:
                r = http.post("/api/v1/tasks", json={"handler": "sleep", "payload": {"seconds": seconds}})
                assert r.status_code == 202, r.text
                task_id = r.json()["id"]
                try:
                    wait_until(lambda: http.get(f"/api/v1/tasks/{task_id}").json().get("status") == "succeeded",
                               timeout=timeout, interval=0.2, message=f"task {task_id} succeeded")
                except AssertionError as exc:  # say where it stopped: its state, events and the components' logs
                    state = http.get(f"/api/v1/tasks/{task_id}").text
                    events = http.get(f"/api/v1/tasks/{task_id}/events").text
                    raise AssertionError(f"{exc}\nstate: {state}\nevents: {events}\n{tails(logs)}") from None

            wait_until(ready, timeout=90, interval=0.2, message="API ready")
            run_task(0, 60)

            leader = client.list_topics(timeout=10).topics[Topics(settings.prefix).events].partitions[0].leader
            cluster.node(leader).kill()

            def brokers_left() -> int | None:
                # A metadata request sent to the node just killed times out until the client learns it is gone.
                try:
                    return len(client.list_topics(timeout=5).brokers)
                except KafkaException:
                    return None

            wait_until(lambda: brokers_left() == 2, timeout=60, message="the cluster without the killed node")
            run_task(0, 90)
    finally:
        stop_all(*components)
