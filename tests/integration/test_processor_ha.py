"""Two processors share the partitions; one is SIGKILLed mid-load and the other takes over (issue 7, item 6).

Processors A and B (subprocesses, each with its own data directory) and one
executor run a stream of tasks written straight to ``<p>.events`` at a
steady rate. A joins first and owns every partition; B joins and takes some
(cooperative-sticky: which ones, B's log says). Once a part of the stream
has succeeded, B is SIGKILLed while the writer goes on. A gets B's
partitions back after the group notices (``session.timeout.ms`` of the test
settings, ``SESSION_TIMEOUT_MS`` in tests/conftest.py, plus a rebalance), rebuilds their tables from the ``<p>.state``
changelog (up to its end offsets) and folds what B left and what arrived
meanwhile. Every task must succeed.

Time to recover = from the kill to the first task state written on a
taken-over partition after it (record timestamps: B was dead by then, so A
wrote it; the reader's polling does not count). Printed with the number
of records A restored.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from datetime import UTC, datetime

import pytest

from taskstream.schemas import Settings, TaskCreated, Topics, codec
from tests.conftest import wait_until
from tests.integration.test_dag import StateTable
from tests.kafka_helpers import Component, TopicReader, producer, stop_all

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = 400
RATE = 50  # tasks per second: the stream lasts 8 s, so it runs on through the takeover
ASSIGNED = re.compile(r"partitions \[([\d, ]*)\] assigned; tables rebuilt from \S+ \((\d+) records, ([\d.]+)s\)")


def assignments(log_path) -> list[tuple[list[int], int, float]]:
    """(partitions, records restored, seconds) of each assignment a processor logged, in order."""
    try:
        text = log_path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    return [([int(p) for p in m[1].split(",") if p.strip()], int(m[2]), float(m[3])) for m in ASSIGNED.finditer(text)]


def own_settings(settings: Settings, tmp_path, name: str) -> Settings:
    update = {"data_dir": tmp_path / name}
    if "metrics_port" in Settings.model_fields:  # two processors on one machine must not share a metrics port
        update["metrics_port"] = 0
    return settings.model_copy(update=update)


def test_sigkill_one_of_two_processors_mid_load_the_other_takes_over(settings: Settings, tmp_path) -> None:
    topics = Topics(settings.prefix)
    logs = {name: tmp_path / f"{name}.log" for name in ("a", "b", "executor")}
    a = Component(own_settings(settings, tmp_path, "a"), "processor", log_path=logs["a"])
    procs = {"a": a}
    table = StateTable(settings)
    writer_done = threading.Event()
    written: list[str] = []
    try:
        wait_until(lambda: any(p for p, _, _ in assignments(logs["a"])), timeout=30, message="A assigned")
        b = procs["b"] = Component(own_settings(settings, tmp_path, "b"), "processor", log_path=logs["b"])
        b_parts = wait_until(lambda: next((p for p, _, _ in assignments(logs["b"]) if p), None), timeout=30,
                             message="B assigned partitions")
        procs["executor"] = Component(settings, "executor", "--concurrency", "8", log_path=logs["executor"])

        def write() -> None:
            p = producer(settings)
            start = time.monotonic()
            for i in range(N):
                e = TaskCreated(task_id=f"ha-{i:04d}", occurred_at=datetime.now(UTC), producer="test",
                                handler="sleep", payload=codec.dumps_json({"seconds": 0.01}), max_attempts=1)
                p.produce(topics.events, codec.encode(e), e.task_id.encode(), headers=codec.headers(e))
                written.append(e.task_id)
                p.poll(0)
                time.sleep(max(0.0, start + (i + 1) / RATE - time.monotonic()))
            assert p.flush(10) == 0
            writer_done.set()

        threading.Thread(target=write, name="writer", daemon=True).start()

        def succeeded(states) -> int:
            return sum(1 for s in states.values() if s.status == "succeeded")

        table.until(lambda s: succeeded(s) >= N // 4, timeout=60, message=f"{N // 4} tasks succeeded",
                    procs=tuple(procs.values()))
        done_at_kill = {tid for tid, s in table.states.items() if s.status == "succeeded"}
        b.signal(signal.SIGKILL)
        killed_at = time.time()
        b.proc.wait()
        in_flight = len(written) - len(done_at_kill)
        del procs["b"]

        states = table.until(lambda s: writer_done.is_set() and len(s) == N and succeeded(s) == N, timeout=90,
                             message=f"all {N} tasks succeeded", procs=tuple(procs.values()))
        assert sorted(states) == sorted(written) and {s.status for s in states.values()} == {"succeeded"}

        # A took B's partitions back and rebuilt them from the changelog.
        taken = [(parts, n, secs) for parts, n, secs in assignments(logs["a"])[1:] if set(parts) & set(b_parts)]
        assert taken, f"A never logged an assignment of B's partitions {b_parts}: {assignments(logs['a'])}"
        restored = sum(n for _, n, _ in taken)

        # Recovery: the first task state on a taken-over partition written after the kill (by A).
        reader = TopicReader(settings, topics.state)
        try:
            reader.read_to_end()
        finally:
            reader.close()
        first_progress = None
        progressed = 0
        for p in b_parts:
            after = [m for m in reader.messages
                     if m.partition() == p and m.value() and m.timestamp()[1] / 1000 >= killed_at]
            progressed += len(after)
            if after:
                t = after[0].timestamp()[1] / 1000
                first_progress = t if first_progress is None else min(first_progress, t)
        assert first_progress is not None and progressed > 0, "A wrote nothing on B's partitions after taking them"
        recovery = first_progress - killed_at
        print(f"\nprocessor HA: B owned partitions {b_parts} of {settings.partitions}; SIGKILLed with "
              f"{len(done_at_kill)}/{N} tasks succeeded and {in_flight} written but not yet seen succeeded; A restored "
              f"{restored} records of {topics.state} in {sum(s for _, _, s in taken):.2f}s; time to recover "
              f"(kill -> first task state A wrote on a taken-over partition) {recovery:.1f}s; "
              f"{progressed} states written there after the takeover; all {N} succeeded")
        assert 0 < recovery < 30
    finally:
        writer_done.set()
        table.close()
        stop_all(*procs.values())
