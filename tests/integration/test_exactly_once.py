"""One of two processors is SIGKILLed while 150 diamond workflows run; the whole log is read afterwards
(issue 27, item 2: exactly-once processing).

Each diamond is a -> (b, c) -> d (600 tasks), written in three generations
as in tests/integration/test_processor_kill.py. Processors A and B share the
partitions (each with its own data directory); one executor runs the tasks
(the built-in ``sleep``, a few ms each, concurrency 8, so the processors are
the bottleneck). Once about 30% of the tasks succeeded, B is SIGKILLed in the
middle of its transactions; A takes B's partitions over (after the session
timeout, and once the broker aborted B's open transaction at its
``transaction.timeout.ms``) and finishes. The same test with
``processor_exactly_once=False`` finds follow-up events written twice.

The checker reads every partition of the log with ``read_committed``, as
every reader of ours does:

- every task reached exactly one terminal status (succeeded) and every d
  started after its b and c finished;
- no ready message was emitted twice: one record per (task, attempt) across
  the ready topics;
- no follow-up event was written twice: every event a processor wrote has an
  id of its own (ids are derived from their cause, docs/decisions/0011, so a
  follow-up decided twice would carry the same id), and one TaskQueued per
  (task, attempt).

Handler runs per task (TaskSucceeded events: an executor that loses its
partitions, for example when its session times out on a loaded machine,
runs what it had not committed again, at least once by design) and the
records a
``read_uncommitted`` reader sees in the output topics beyond the committed
ones (outputs of aborted transactions: the kill landed mid-transaction) are
printed.
"""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from taskstream.schemas import ReadyTask, Settings, TaskCreated, TaskQueued, TaskState, TaskSucceeded, Topics, codec
from tests.conftest import wait_until
from tests.integration.test_dag import StateTable, write_in_generations
from tests.integration.test_processor_ha import assignments, own_settings
from tests.integration.test_processor_kill import diamond_deps
from tests.kafka_helpers import Component, now, stop_all

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = 150


def read_all(settings: Settings, *topics: str, isolation: str = "read_committed") -> list:
    """Every record of ``topics`` (all partitions, from the beginning, up to their end as of now)."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "eos-checker",
                         "enable.auto.commit": False, "isolation.level": isolation, "enable.partition.eof": True})
    try:
        md = consumer.list_topics(timeout=10).topics
        tps = [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in md[t].partitions]
        ends = {(tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1]
                for tp in tps}
        consumer.assign(tps)
        pending = {k for k, end in ends.items() if end > 0}
        out = []
        deadline = time.monotonic() + 60
        while pending:
            assert time.monotonic() < deadline, f"reading {sorted(pending)} to their ends timed out"
            for m in consumer.consume(1000, 0.2):
                key = (m.topic(), m.partition())
                if m.error() is None:
                    out.append(m)
                elif m.offset() is not None and m.offset() >= ends.get(key, 0):
                    pending.discard(key)  # end of partition
            at = consumer.position([TopicPartition(t, p) for t, p in pending])
            pending -= {(tp.topic, tp.partition) for tp in at if tp.offset >= ends[(tp.topic, tp.partition)]}
        return out
    finally:
        consumer.close()


def test_sigkill_one_of_two_processors_mid_diamonds_no_output_lost_or_repeated(settings: Settings, tmp_path) -> None:
    settings = settings.model_copy(update={"processor_exactly_once": True})  # opt-in (docs/concepts.md)
    topics = Topics(settings.prefix)
    deps = diamond_deps(N)
    gens = [[t for t in deps if t.endswith(s)] for s in ("-a", ("-b", "-c"), "-d")]
    d_ids = gens[2]
    logs = {name: tmp_path / f"{name}.log" for name in ("a", "b", "executor")}
    procs = {"a": Component(own_settings(settings, tmp_path, "a"), "processor", log_path=logs["a"])}
    table = StateTable(settings)
    t0 = time.monotonic()
    try:
        wait_until(lambda: any(p for p, _, _ in assignments(logs["a"])), timeout=30, message="A assigned")
        b = procs["b"] = Component(own_settings(settings, tmp_path, "b"), "processor", log_path=logs["b"])
        b_parts = wait_until(lambda: next((p for p, _, _ in assignments(logs["b"]) if p), None), timeout=30,
                             message="B assigned partitions")
        procs["executor"] = Component(settings, "executor", "--concurrency", "8", log_path=logs["executor"])
        created_at = now()

        def make(tid: str) -> TaskCreated:
            return TaskCreated(task_id=tid, occurred_at=created_at, producer="test", handler="sleep",
                               payload=codec.dumps_json({"seconds": 0.005}), depends_on=deps[tid],
                               max_attempts=1)

        write_in_generations(settings, gens, make)

        def done(states) -> int:
            return sum(1 for t in deps if t in states and states[t].status == "succeeded")

        table.until(lambda s: done(s) >= 0.3 * len(deps), timeout=120, message="30% of the tasks succeeded",
                    procs=tuple(procs.values()))
        done_at_kill = done(table.states)
        b.signal(signal.SIGKILL)
        killed_at = time.time()
        b.proc.wait()
        killed_after = time.monotonic() - t0
        del procs["b"]

        states = table.until(lambda s: all(t in s and s[t].status == "succeeded" for t in deps), timeout=180,
                             message=f"all {len(deps)} tasks succeeded after the kill", procs=tuple(procs.values()))
        elapsed = time.monotonic() - t0
        late = [d for d in d_ids
                if states[d].started_at < max(states[deps[d][0]].finished_at, states[deps[d][1]].finished_at)]
        assert late == [], f"d's started before their b and c finished: {late[:5]}"

        # The whole log, committed records only.
        ready = [codec.decode(m.value()) for m in read_all(settings, *topics.all_ready)]
        per_attempt = Counter((r.task_id, r.attempt) for r in ready if isinstance(r, ReadyTask))
        twice = {k: n for k, n in per_attempt.items() if n > 1}
        assert twice == {}, f"{len(twice)} ready message(s) emitted more than once, e.g. {list(twice.items())[:5]}"
        assert {t for t, _ in per_attempt} == set(deps), "a task was never made ready"

        records = read_all(settings, topics.events)
        events = [codec.decode(m.value()) for m in records]
        by_processor = Counter(e.event_id for e in events if e.producer.startswith("processor-"))
        repeated = {i: n for i, n in by_processor.items() if n > 1}
        assert repeated == {}, f"{len(repeated)} follow-up event(s) written more than once"
        queued = Counter((e.task_id, e.attempt) for e in events if isinstance(e, TaskQueued))
        assert set(queued.values()) == {1} and len(queued) == len(deps), "a TaskQueued written twice or missing"
        runs = Counter(e.task_id for e in events if isinstance(e, TaskSucceeded))
        assert set(runs) == set(deps)

        # Proof the kill landed mid-flight: A wrote states on B's partitions after the kill.
        taken_over = sum(1 for m in read_all(settings, topics.state)
                         if m.partition() in b_parts and m.value() and m.timestamp()[1] / 1000 >= killed_at
                         and isinstance(codec.decode(m.value()), TaskState))
        assert taken_over > 0, "A wrote nothing on B's partitions after the kill: the kill came too late"
        outputs = (topics.events, topics.state, *topics.all_ready)
        aborted = len(read_all(settings, *outputs, isolation="read_uncommitted")) - len(read_all(settings, *outputs))
        print(f"\nexactly once: B (partitions {b_parts}) SIGKILLed after {killed_after:.1f}s with "
              f"{done_at_kill}/{len(deps)} tasks succeeded; A wrote {taken_over} state records on them afterwards; "
              f"all {len(deps)} tasks succeeded after {elapsed:.1f}s; ready messages {len(ready)} (0 twice); records "
              f"of aborted transactions {aborted}; processor events {sum(by_processor.values())} (0 twice); tasks "
              f"run more than once {sum(1 for n in runs.values() if n > 1)}")
    finally:
        table.close()
        stop_all(*procs.values())


def test_a_fenced_processor_rebuilds_its_producer_and_goes_on(settings: Settings, tmp_path) -> None:
    """Another client takes the processor's transactional id (``init_transactions``) while tasks flow: the
    processor's producer is fenced (a fatal error), is rebuilt (fencing the intruder in turn), the open
    transaction's batch is folded again from the committed offsets, and every task succeeds once."""
    settings = settings.model_copy(update={"processor_instance_id": "eos-fenced", "processor_exactly_once": True})
    topics = Topics(settings.prefix)
    log_path = tmp_path / "processor.log"
    procs = [Component(settings, "processor", log_path=log_path),
             Component(settings, "executor", "--concurrency", "4", log_path=tmp_path / "executor.log")]
    table = StateTable(settings)
    ids = [f"fence-{i:03d}" for i in range(200)]
    try:
        wait_until(lambda: any(p for p, _, _ in assignments(log_path)), timeout=30, message="processor assigned")
        created_at = now()

        def make(tid: str) -> TaskCreated:
            return TaskCreated(task_id=tid, occurred_at=created_at, producer="test", handler="sleep",
                               payload=codec.dumps_json({"seconds": 0.01}), max_attempts=1)

        write_in_generations(settings, [ids[:100]], make)
        table.until(lambda s: sum(1 for t in ids[:100] if t in s and s[t].status == "succeeded") >= 30,
                    timeout=60, message="a third of the tasks succeeded", procs=procs)
        intruder = Producer({"bootstrap.servers": settings.bootstrap_servers,
                             "transactional.id": f"{settings.prefix}-processor-eos-fenced"})
        intruder.init_transactions(30)  # fences the processor's producer
        write_in_generations(settings, [ids[100:]], make)
        table.until(lambda s: all(t in s and s[t].status == "succeeded" for t in ids), timeout=90,
                    message="every task succeeded after the fencing", procs=procs)
        text = log_path.read_text(errors="replace")
        assert "rebuilt after a fatal error" in text, "the processor's producer was never fenced and rebuilt"
        ready = Counter((r.task_id, r.attempt) for r in
                        (codec.decode(m.value()) for m in read_all(settings, *topics.all_ready)))
        assert set(ready.values()) == {1} and {t for t, _ in ready} == set(ids)
    finally:
        table.close()
        stop_all(*procs)
