"""The processor is SIGKILLed in the middle of 300 diamond workflows and restarted (issue 4, Tests).

Each diamond is a -> (b, c) -> d. The 1,200 TaskCreated events are written
in three generations (all a's, then the b's and c's, then the d's), each
acknowledged before the next. An executor runs them (the built-in ``sleep``
handler, a few ms each, so the work spreads over seconds); once about 30% of
the d's succeeded the processor is killed with SIGKILL and a new one started
with the same settings. Every task must end succeeded, and every d must
have started after both its b and its c finished. Tasks that ran more than
once (the at-least-once cost of the crash) are counted and printed.
"""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest

from taskstream.schemas import TaskCreated, TaskState, TaskSucceeded, Topics, codec
from tests.integration.test_dag import StateTable, write_in_generations
from tests.kafka_helpers import Component, TopicReader, now, stop_all

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = 300


def diamond_deps(n: int) -> dict[str, list[str]]:
    deps: dict[str, list[str]] = {}
    for i in range(n):
        a, b, c, d = (f"w{i:03d}-{k}" for k in "abcd")
        deps.update({a: [], b: [a], c: [a], d: [b, c]})
    return deps


def states_by_partition(settings) -> dict[int, list]:
    """Every record of ``<p>.state``, per partition, in offset order."""
    reader = TopicReader(settings, Topics(settings.prefix).state)
    try:
        reader.read_to_end()
    finally:
        reader.close()
    out: dict[int, list] = {}
    for m in reader.messages:
        out.setdefault(m.partition(), []).append(m)
    return {p: sorted(ms, key=lambda m: m.offset()) for p, ms in out.items()}


def test_processor_killed_mid_workflows_all_finish(settings, tmp_path):
    deps = diamond_deps(N)
    gens = [[t for t in deps if t.endswith(s)] for s in ("-a", ("-b", "-c"), "-d")]
    d_ids = gens[2]
    topics = Topics(settings.prefix)

    proc = Component(settings, "processor", log_path=tmp_path / "processor.log")
    ex = Component(settings, "executor", "--concurrency", "4", log_path=tmp_path / "executor.log")
    table = StateTable(settings)
    events = TopicReader(settings, topics.events)
    t0 = time.monotonic()
    try:
        created_at = now()

        def make(tid: str) -> TaskCreated:
            return TaskCreated(task_id=tid, occurred_at=created_at, producer="test", handler="sleep",
                               payload=codec.dumps_json({"seconds": 0.1 if tid.endswith("-d") else 0.005}),
                               depends_on=deps[tid], max_attempts=1)

        write_in_generations(settings, gens, make)

        def d_done(states) -> int:
            return sum(1 for d in d_ids if d in states and states[d].status == "succeeded")

        table.until(lambda s: d_done(s) >= 0.3 * N, timeout=90, message="30% of the d's succeeded", procs=(proc, ex))
        at_kill = dict(table.states)
        done_at_kill = d_done(at_kill)
        unfinished = sum(1 for t in deps if t not in at_kill or at_kill[t].status != "succeeded")
        proc.signal(signal.SIGKILL)
        proc.proc.wait()
        killed_at = time.time()
        killed_after = time.monotonic() - t0
        proc = Component(settings, "processor", log_path=tmp_path / "processor2.log")
        print(f"\nSIGKILL after {killed_after:.1f}s: {done_at_kill}/{N} d's and {len(deps) - unfinished} tasks "
              f"seen succeeded; prefix {settings.prefix}")

        states = table.until(lambda s: all(t in s and s[t].status == "succeeded" for t in deps), timeout=120,
                             message=f"all {len(deps)} tasks succeeded after the restart", procs=(proc, ex))
        elapsed = time.monotonic() - t0
        bad = {t: states[t].status for t in deps if states[t].status != "succeeded"}
        assert bad == {}
        late = []
        for d in d_ids:
            b, c = deps[d]
            if states[d].started_at < max(states[b].finished_at, states[c].finished_at):
                late.append(d)
        assert late == [], f"d's started before their b and c finished: {late[:5]}"

        # How many ran more than once: TaskSucceeded events per task in the log.
        def successes() -> Counter:
            return Counter(v.task_id for v in events.values() if isinstance(v, TaskSucceeded))

        events.until(lambda m: len(successes()) == len(deps), timeout=30, message="every TaskSucceeded in the log")
        runs = successes()
        # Proof the kill landed mid-flight: the restarted processor wrote states (records of <p>.state stamped
        # after the kill) that finished tasks.
        finished_by_successor = 0
        for records in states_by_partition(settings).values():
            # <p>.state holds task states and dependency edges (DependencyRegistered); count the states.
            decoded = (codec.decode(m.value()) for m in records if m.value() and m.timestamp()[1] / 1000 >= killed_at)
            finished_by_successor += sum(1 for v in decoded if isinstance(v, TaskState) and v.status == "succeeded")
        assert finished_by_successor > 0, "the restarted processor finished nothing: the kill came too late"
        more = {t: k for t, k in runs.items() if k > 1}
        print(
            f"\n{len(deps)} tasks; processor SIGKILLed after {killed_after:.1f}s with {done_at_kill}/{N} d's "
            f"succeeded and {unfinished} tasks not yet seen succeeded; the new processor finished "
            f"{finished_by_successor}; all succeeded after {elapsed:.1f}s; "
            f"{len(more)} task(s) ran more than once (max {max(more.values(), default=1)} runs)"
        )
    finally:
        events.close()
        table.close()
        stop_all(ex, proc)
