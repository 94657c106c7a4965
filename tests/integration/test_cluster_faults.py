"""Faults of a three-broker cluster under load, each followed by a read of the whole log (issue 27, item 4).

One ``KafkaCluster`` of three KRaft nodes (each broker and controller) and one stack serve the whole module:
topics with three replicas and ``min.insync.replicas`` 2 (``cluster_sizes``), a processor writing in transactions
(``processor_exactly_once``), two executors and an API, each a `taskstream` subprocess. Every scenario submits
``TASKS`` tasks through the API, spread over its load window, keeps the ids the API acknowledged (202), injects its
fault while they flow, waits until every acknowledged task succeeded, then runs the checker (``tests.log_checker``)
over the whole ``<p>.events`` log and the ready topics: every acknowledged submission reaches exactly one terminal
status, no event id appears twice, no (task, attempt) is made ready twice; handler runs per task are reported.
The checker is cumulative: each scenario checks every task acknowledged so far, so damage a later fault did to an
earlier task's history would show too.

Scale: 300 tasks per scenario by default (1,500 in the module): every fault lands while tasks flow on every
partition (30 tasks/s around a kill, 5 to 15/s over the longer faults), which is what the properties need; more
tasks add load, not coverage. ``TASKSTREAM_FAULT_TASKS=2000`` runs the issue's 2,000 per scenario. The module's
time goes mostly to starting nodes again (eight restarts, 5 s each on an idle machine, 30 s on a loaded one).
The heal figures (printed, and in docs/benchmarks/2026-12-07-cluster-faults.md): from the fault to the first
success of a task acknowledged after it ("next success"), the longest pause between two successes after the fault
("stall"), and from the fault until every acknowledged task succeeded ("drained"; it includes the rest of the load
window). Only the properties are asserted, and the drain within a generous bound; the timings are reported.

The rolling restart runs last: with librdkafka 2.16 it can leave a transaction call of the exactly-once processor
waiting for good (``WEDGE``); ``RecoveringProducer`` gives such a call up and replaces its client, and the test
fails naming the symptom if the processor stays stuck.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

from taskstream.cli.broker import KafkaBroker, KafkaCluster, cluster_sizes, free_port
from taskstream.schemas import Settings, TaskSucceeded, Topics, catalogue, codec
from taskstream.schemas.kafka import admin, describe_cluster, end_offsets, ensure_topics, group_offsets, reader
from tests.conftest import SESSION_TIMEOUT_MS, wait_until
from tests.kafka_helpers import Component, stop_all
from tests.log_checker import LogCheck, check_log

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Tasks submitted per scenario (the issue asks for 2,000; see the module docstring).
TASKS = int(os.environ.get("TASKSTREAM_FAULT_TASKS", "300"))
#: Seconds of load before each fault.
LEAD_S = 3.0
#: Seconds every acknowledged task gets to succeed after the load ends.
DRAIN_S = 180.0
#: Executors and their slots.
EXECUTORS = 2
CONCURRENCY = 8


def _now() -> float:
    return time.time()


class Successes:
    """Ids and times of the TaskSucceeded events in ``<p>.events`` (committed records, as our readers read),
    polled as the log grows."""

    def __init__(self, settings: Settings) -> None:
        self.consumer = reader(settings, "fault-successes", f"{settings.prefix}-fault-successes")
        topic = Topics(settings.prefix).events
        parts = self.consumer.list_topics(topic, timeout=30).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        self.at: dict[str, float] = {}

    def poll(self) -> dict[str, float]:
        for m in self.consumer.consume(2000, 0.2):
            if m.error() is None and m.value():
                e = codec.decode(m.value())
                if isinstance(e, TaskSucceeded):
                    self.at.setdefault(e.task_id, e.occurred_at.timestamp())
        return self.at

    def close(self) -> None:
        self.consumer.close()


@dataclass
class Load:
    """``n`` tasks POSTed to the API at an even pace over ``window_s`` seconds by a few threads; ``acked`` maps the
    ids the API acknowledged to when (wall clock) it did; ``refused`` counts the rest, by reason."""

    api: str
    n: int
    window_s: float
    seconds: float
    acked: dict[str, float] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, workers: int = 4) -> Load:
        self.t0 = time.monotonic()
        self._next = 0
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]
        for t in self.threads:
            t.start()
        return self

    def _run(self) -> None:
        with httpx.Client(base_url=self.api, timeout=30) as http:
            while True:
                with self._lock:
                    j, self._next = self._next, self._next + 1
                if j >= self.n:
                    return
                delay = self.t0 + j * self.window_s / self.n - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing: the load is spread over the window
                body = {"handler": "sleep", "payload": {"seconds": self.seconds}}
                try:
                    r = http.post("/api/v1/tasks", json=body)
                except httpx.HTTPError as exc:
                    reason = type(exc).__name__
                else:
                    if r.status_code == 202:
                        with self._lock:
                            self.acked[r.json()["id"]] = _now()
                        continue
                    reason = str(r.status_code)
                with self._lock:
                    self.refused[reason] = self.refused.get(reason, 0) + 1

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "the load did not finish"


@dataclass
class Stack:
    """The module's cluster and components (by name, a killed one replaced under its name), what every scenario
    so far acknowledged, and the figures it measured."""

    cluster: KafkaCluster
    settings: Settings
    logs: Path
    components: dict[str, Component]
    successes: Successes
    acknowledged: dict[str, float] = field(default_factory=dict)
    figures: list[dict] = field(default_factory=list)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.settings.api_port}"

    def start(self, name: str, *args: str) -> Component:
        self.components[name] = Component(self.settings, *args, log_path=self.logs / f"{name}.log")
        return self.components[name]

    def leader_of(self, topic: str, partition: int) -> int:
        """The partition's leader as the metadata says; -1 when it names none or the request failed (one sent to
        a node just killed times out until the client learns it is gone)."""
        try:
            return admin(self.settings).list_topics(topic, timeout=10).topics[topic].partitions[partition].leader
        except KafkaException:
            return -1

    def leader(self, topic: str, partition: int) -> int:
        """``leader_of``, waited for until the metadata names one."""
        return int(wait_until(lambda: max(self.leader_of(topic, partition), 0), timeout=30, interval=0.2,
                              message=f"a leader of {topic} [{partition}]"))

    def healthy(self) -> bool:
        """Every node a broker and every partition of ours and of Kafka's internal topics with three in-sync
        replicas."""
        try:
            md = admin(self.settings).list_topics(timeout=5)
        except Exception:
            return False
        return len(md.brokers) == 3 and all(
            len(p.isrs) == 3 for name, t in md.topics.items() if name.startswith((self.settings.prefix + ".", "__"))
            for p in t.partitions.values())

    def wait_healthy(self, timeout: float = 120) -> None:
        wait_until(self.healthy, timeout=timeout, interval=0.5, message="three brokers, every replica in sync")


def _restart(node: KafkaBroker, timeout: float = 120) -> None:
    node.start(timeout=timeout)
    node.restarts += 1


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    # Not under pytest's basetemp: other pytest sessions on the machine prune old basetemps, and the logs of a
    # failed run are wanted afterwards. Removed when every test of the module passed.
    root = Path(tempfile.mkdtemp(prefix="taskstream-cluster-faults-"))
    failed_before = request.session.testsfailed
    cluster = KafkaCluster(3, 0, root / "kafka", ports=[free_port() for _ in range(3)],
                           controller_ports=[free_port() for _ in range(3)])
    cluster.start(timeout=180)
    components: dict[str, Component] = {}
    successes = None
    try:
        replicas, min_isr = cluster_sizes(3)
        settings = Settings(bootstrap_servers=cluster.bootstrap_servers, prefix="faults", partitions=3,
                            replication_factor=replicas, min_insync_replicas=min_isr, data_dir=root / "data",
                            session_timeout_ms=SESSION_TIMEOUT_MS, metrics_port=0, api_port=free_port(),
                            log_level="INFO", processor_exactly_once=True)
        assert ensure_topics(settings, catalogue(settings), timeout=60) == []
        successes = Successes(settings)
        s = Stack(cluster, settings, root, components, successes)
        s.start("processor", "processor")
        for i in range(EXECUTORS):
            s.start(f"executor-{i}", "executor", "--concurrency", str(CONCURRENCY))
        s.start("api", "api")
        with httpx.Client(base_url=s.api, timeout=10) as http:
            def ready() -> bool:
                try:
                    return http.get("/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(ready, timeout=90, interval=0.2, message="API ready")
        yield s
        if s.figures:
            print("\ncluster faults (" + f"{TASKS} tasks per scenario):\n" +
                  "\n".join(json.dumps(f) for f in s.figures))
    finally:
        if successes is not None:
            successes.close()
        stop_all(*components.values())
        cluster.stop()
        if request.session.testsfailed == failed_before:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"\ncluster faults: logs kept in {root}")


class NotDrained(AssertionError):
    """Acknowledged tasks that did not succeed in time."""


def wait_succeeded(stack: Stack, ids: list[str], timeout: float, message: str) -> None:
    """Until every task of ``ids`` succeeded (``NotDrained`` after ``timeout``); fails at once if a component
    exited."""
    procs = list(stack.components.values())

    def drained() -> bool:
        at = stack.successes.poll()
        for c in procs:
            assert c.proc.poll() is None, f"a component exited with {c.proc.returncode} (logs in {stack.logs})"
        return all(t in at for t in ids)

    try:
        wait_until(drained, timeout=timeout, interval=0.1, message=message)
    except AssertionError as exc:
        done = sum(t in stack.successes.at for t in ids)
        raise NotDrained(f"{exc} ({done}/{len(ids)} succeeded; logs in {stack.logs})") from None


def run_scenario(stack: Stack, name: str, fault: Callable[[], dict], *, window_s: float, seconds: float = 0.05,
                 heal: Callable[[], None] | None = None, drain_s: float = DRAIN_S) -> LogCheck:
    """Submit ``TASKS`` tasks over ``window_s`` seconds; ``LEAD_S`` in, call ``fault`` (it returns figures of its
    own and may block while the fault lasts); wait until every acknowledged task succeeded; ``heal`` the cluster
    (not timed); check the whole log; record and print the figures."""
    load = Load(stack.api, TASKS, window_s, seconds).start()
    wait_until(lambda: len(stack.successes.poll()) and any(t in stack.successes.at for t in list(load.acked)),
               timeout=60, message="tasks of the load succeeding before the fault")
    delay = LEAD_S - (time.monotonic() - load.t0)
    if delay > 0:
        time.sleep(delay)  # the fault lands LEAD_S into the load
    fault_at = _now()
    extra = fault()
    load.join(window_s + 120)
    acked = dict(load.acked)
    stack.acknowledged.update(acked)
    wait_succeeded(stack, list(acked), drain_s, f"{name}: every acknowledged task succeeded")
    if heal is not None:
        heal()
    result = check_log(stack.settings, stack.acknowledged)
    times = sorted(stack.successes.at[t] for t in acked)
    after = [t for t in times if t >= fault_at]
    gaps = [b - a for a, b in zip([fault_at, *after], after, strict=False)]
    next_success = min((stack.successes.at[t] for t, at in acked.items() if at >= fault_at), default=None)
    figures = {
        "scenario": name, "acknowledged": len(acked), "refused": load.refused,
        "next_success_s": None if next_success is None else round(next_success - fault_at, 2),
        "stall_s": round(max(gaps, default=0.0), 2), "drained_s": round(max(times) - fault_at, 2),
        "load_after_fault_s": round(load.t0 + window_s - time.monotonic() + (_now() - fault_at), 2),
        "attempts_run_twice": sum(1 for t, _ in result.run_twice if t in acked), **extra,
    }
    stack.figures.append(figures)
    print(f"\n{name}: {json.dumps(figures)}\n  {result.summary()}")
    assert result.problems == [], result.problems
    return result


def test_sigkill_the_leader_of_a_busy_events_partition(stack: Stack) -> None:
    events = Topics(stack.settings.prefix).events

    def fault() -> dict:
        ends = end_offsets(stack.successes.consumer, events, range(3), timeout=10)
        busiest = max(ends, key=ends.__getitem__)
        leader = stack.leader(events, busiest)
        stack.cluster.node(leader).kill()
        t = _now()
        wait_until(lambda: stack.leader_of(events, busiest) not in (leader, -1), timeout=30,
                   message="a new leader of the partition")
        return {"node": leader, "partition": busiest, "new_leader_s": round(_now() - t, 2)}

    run_scenario(stack, "SIGKILL the leader of a busy events partition", fault, window_s=10,
                 heal=lambda: (_restart(_dead(stack)), stack.wait_healthy()))


def _dead(stack: Stack) -> KafkaBroker:
    return next(n for n in stack.cluster.nodes if not n.alive())


def test_sigstop_one_broker_for_20_s(stack: Stack) -> None:
    events = Topics(stack.settings.prefix).events

    def fault() -> dict:
        node_id = stack.leader(events, 0)
        node = stack.cluster.node(node_id)
        node.signal(signal.SIGSTOP)
        stopped = _now()
        try:
            time.sleep(20)  # the fault itself: the node frozen for 20 s
            frozen = max(stack.successes.poll().values())
        finally:
            node.signal(signal.SIGCONT)
        resumed = _now()
        wait_until(lambda: max(stack.successes.poll().values()) > max(frozen, resumed), timeout=60, interval=0.1,
                   message="a task succeeding after SIGCONT")
        return {"node": node_id, "last_success_while_frozen_s": round(frozen - stopped, 2),
                "next_success_after_sigcont_s": round(max(stack.successes.at.values()) - resumed, 2)}

    run_scenario(stack, "SIGSTOP one broker for 20 s", fault, window_s=26, heal=stack.wait_healthy)


def active_controller(cluster: KafkaCluster) -> int:
    """The node id of the KRaft quorum's leader, from the quorum state each node keeps on disk (the leader of the
    highest epoch). Brokers do not tell clients the active controller (DescribeCluster names a broker in KRaft)."""
    best = (-1, -1)
    for node in cluster.nodes:
        try:
            state = json.loads((node.log_dir / "__cluster_metadata-0" / "quorum-state").read_text())
        except (OSError, ValueError):
            continue
        if state.get("leaderId", -1) >= 0:
            best = max(best, (state.get("leaderEpoch", -1), state["leaderId"]))
    assert best[1] >= 0, "no node knows a quorum leader"
    return best[1]


def test_sigkill_the_active_kraft_controller(stack: Stack) -> None:
    def fault() -> dict:
        node_id = active_controller(stack.cluster)
        said = describe_cluster(admin(stack.settings), 10)["controller"]
        stack.cluster.node(node_id).kill()
        t = _now()
        wait_until(lambda: active_controller(stack.cluster) != node_id, timeout=30, message="a new active controller")
        return {"node": node_id, "describe_cluster_named": said, "new_controller": active_controller(stack.cluster),
                "new_controller_s": round(_now() - t, 2)}

    run_scenario(stack, "SIGKILL the active KRaft controller", fault, window_s=10,
                 heal=lambda: (_restart(_dead(stack)), stack.wait_healthy()))


def test_sigkill_executors_every_5_s(stack: Stack) -> None:
    kills = []

    def fault() -> dict:
        for i in range(4):
            name = f"executor-{i % EXECUTORS}"
            stack.components[name].kill()
            kills.append(_now())
            stack.start(name, "executor", "--concurrency", str(CONCURRENCY))
            if i < 3:
                time.sleep(5)  # the fault's rhythm: a kill every 5 s
        return {"kills": len(kills)}

    result = run_scenario(stack, "SIGKILL an executor every 5 s", fault, window_s=20, seconds=0.5)
    print(f"  executor kills at {[round(k - kills[0], 1) for k in kills]} s; {result.summary()}")


def processor_wedged(stack: Stack, wait_s: float = 10.0) -> bool:
    """The processor runs, ``<p>.events`` has records its group has not committed, and its committed offsets do
    not move for ``wait_s`` seconds."""
    topics = Topics(stack.settings.prefix)
    client = admin(stack.settings)
    parts = [(topics.events, p) for p in range(stack.settings.partitions)]

    def lag() -> tuple[dict, int]:
        committed = group_offsets(client, topics.processor_group, parts, 10)
        ends = end_offsets(stack.successes.consumer, topics.events, range(stack.settings.partitions), timeout=10)
        return committed, sum(ends[p] - committed.get((t, p), 0) for t, p in parts)

    before, behind = lag()
    time.sleep(wait_s)  # watching for progress
    after, _ = lag()
    return stack.components["processor"].proc.poll() is None and behind > 0 and before == after


#: librdkafka 2.16's send_offsets_to_transaction blocks past its timeout, for good when the group coordinator it
#: cached was a broker that left the metadata (a node stopped for its restart): confluentinc/librdkafka#5456 and
#: #5511. The exactly-once processor's main thread then waits in RecoveringProducer.send_offsets_to_transaction
#: (schemas/kafka.py, called from Processor._commit, streams/processor.py) and would fold nothing more: the call is
#: given up ``WEDGED_AFTER_S`` after its timeout and the client replaced (fencing the wedged one).
WEDGE = ("the exactly-once processor is stuck in send_offsets_to_transaction after a broker left the metadata "
         "(librdkafka#5456/#5511)")


def test_rolling_restart_of_all_three_brokers(stack: Stack) -> None:
    def fault() -> dict:
        took = []
        for node in stack.cluster.nodes:
            t = time.monotonic()
            node.stop()
            _restart(node)
            stack.wait_healthy()
            took.append(round(time.monotonic() - t, 1))
        return {"per_node_s": took}

    try:
        run_scenario(stack, "rolling restart of the three brokers", fault, window_s=45, drain_s=90)
        # the stack still works after the last restart
        probe = Load(stack.api, 20, 2.0, 0.01).start()
        probe.join(60)
        wait_succeeded(stack, list(probe.acked), 60, "tasks submitted after the rolling restart succeeded")
    except NotDrained:
        if processor_wedged(stack, 5.0):
            pytest.fail(f"{WEDGE}: the wedged call was not given up")
        raise
