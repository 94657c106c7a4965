"""Random DAGs through the pure processor step (``fold_step``) with an in-memory log.

The log is one FIFO per task id (the order a partition keeps for one key);
delivery interleaves the FIFOs at random, so events of different tasks
arrive in any order. A model executor takes ready messages in random order
(sometimes twice: ready topics are at least once) and reports success, a
transient failure (first attempt of a "flaky" node, which then succeeds) or
a permanent failure. Crashes rewind a task's FIFO by k events and restore its
state to any snapshot a real processor could have recovered (at least as new
as the rewound position), so events are folded twice and outputs re-sent.

Re-drives: during the run and after it settles, the model re-drives some
failed tasks (and some upstream_failed or any other tasks, which must be
harmless); a re-driven failing task is "fixed" and succeeds from then on, so
its upstream_failed dependents must come back and succeed too.

Checked: every task ends in exactly the status the DAG implies (succeeded /
failed / upstream_failed, failing tasks that were re-driven counting as
succeeding; unknown dependency ids fail their dependents),
nothing is left pending or queued, no task ran before all its dependencies
had succeeded, each handler saw its dependencies' results in ``upstream``,
and rebuilding each task from its FIFO by a plain fold gives the live state.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskstream.schemas import (
    ReadyTask,
    TaskCreated,
    TaskFailed,
    TaskQueued,
    TaskRedriven,
    TaskState,
    TaskSucceeded,
    Topics,
    codec,
)
from taskstream.streams.domain import fold, is_terminal
from taskstream.streams.processor import fold_step

TOPICS = Topics("m")
NOW = datetime(2024, 1, 1, tzinfo=UTC)


def random_dag(rng: random.Random, n: int) -> dict[str, list[str]]:
    """Edges only from a lower to a higher index (acyclic), ~0-4 deps each, a few unknown ids."""
    ids = [f"t{i:03d}" for i in range(n)]
    deps: dict[str, list[str]] = {}
    for i, tid in enumerate(ids):
        k = min(i, rng.choice([0, 1, 1, 2, 2, 3, 4]))
        ds = rng.sample(ids[:i], k)
        if rng.random() < 0.03:
            ds.append(f"ghost-{i}")
        deps[tid] = ds
    return deps


def implied(deps: dict[str, list[str]], failing: set[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for tid, ds in deps.items():  # insertion order is topological
        if any(out.get(d) != "succeeded" for d in ds):
            out[tid] = "upstream_failed"
        elif tid in failing:
            out[tid] = "failed"
        else:
            out[tid] = "succeeded"
    return out


class Log:
    """Per-task FIFOs, a processor folding them with ``fold_step``, and a model executor."""

    def __init__(self, rng: random.Random, deps: dict[str, list[str]], failing: set[str], flaky: set[str]) -> None:
        self.rng = rng
        self.deps, self.failing, self.flaky = deps, failing, flaky
        self.fifo: dict[str, list[bytes]] = defaultdict(list)
        self.pos: dict[str, int] = defaultdict(int)
        self.states: dict[str, TaskState] = {}
        self.edges: dict[str, set[str]] = defaultdict(set)  # upstream -> dependents (the processor's edge records)
        self.snapshots: dict[str, list[TaskState | None]] = defaultdict(list)  # state after offset i
        self.ready: list[ReadyTask] = []
        self.clock = 0
        self.first_succeeded: dict[str, int] = {}
        self.runs: dict[str, list[int]] = defaultdict(list)
        self.crashes = 0
        self.problems: list[str] = []
        self.lost = 0
        self.fixed: set[str] = set()  # failing tasks re-driven after their fix: they succeed from then on
        self.redrives = 0

    def append(self, task_id: str, value: bytes) -> None:
        self.fifo[task_id].append(value)

    def deliverable(self) -> list[str]:
        return [t for t, f in self.fifo.items() if self.pos[t] < len(f)]

    def deliver(self, tid: str, lose_outputs: bool = False) -> None:
        """Fold ``tid``'s next event; ``lose_outputs``: crash after the table write, before any send."""
        self.clock += 1
        offset = self.pos[tid]
        step = fold_step(TOPICS, self.states.get(tid), self.fifo[tid][offset], offset, 0, NOW, "proc",
                         dependents=lambda: sorted(self.edges[tid]))
        if step.edge is not None:  # edges are records of their own: a crash that rewinds the state keeps them
            self.edges[step.edge.task_id].add(step.edge.dependent)
        if step.state is not None:
            self.states[tid] = step.state
        snaps = self.snapshots[tid]
        del snaps[offset:]
        snaps.append(self.states.get(tid))
        self.pos[tid] = offset + 1
        s = self.states.get(tid)
        if s is not None and s.status == "succeeded":
            self.first_succeeded.setdefault(tid, self.clock)
        if lose_outputs:  # the event comes again; the state remembers it (last_offset): replay_outputs
            self.pos[tid] = offset
            self.lost += 1
            return
        for out in step.outputs:
            if out.topic == TOPICS.events:
                self.append(out.key.decode(), out.value)
            elif out.topic in TOPICS.all_retry:  # the retry relay, without the wait
                r = codec.decode(out.value)
                queued = TaskQueued(task_id=r.task_id, occurred_at=NOW, producer="relay", attempt=r.attempt + 1,
                                    priority=r.priority, due_at=r.not_before)
                self.append(r.task_id, codec.encode(queued))
            elif out.topic in TOPICS.all_ready:
                msg = codec.decode(out.value)
                if isinstance(msg, ReadyTask):
                    self.ready.append(msg)

    def crash(self, tid: str) -> None:
        """Rewind ``tid``'s FIFO by k events; its state comes back as of the rewound position or newer."""
        p = self.pos[tid]
        k = self.rng.randint(1, min(p, 6))
        back = p - k
        j = self.rng.randint(back - 1, p - 1)  # snapshot after offset j; -1: before any event
        self.states.pop(tid, None)
        if j >= 0 and self.snapshots[tid][j] is not None:
            self.states[tid] = self.snapshots[tid][j]
        self.pos[tid] = back
        self.crashes += 1

    def execute(self) -> None:
        self.clock += 1
        i = self.rng.randrange(len(self.ready))
        msg = self.ready[i]
        if self.rng.random() > 0.05:  # else: delivered again later (at least once)
            self.ready.pop(i)
        tid = msg.task_id
        self.runs[tid].append(self.clock)
        for d in self.deps[tid]:
            if d not in self.first_succeeded:
                self.problems.append(f"{tid} ran before its dependency {d} succeeded")
        expected_upstream = {d: {"ok": d} for d in self.deps[tid]}
        if codec.loads_json(msg.upstream) != expected_upstream:
            self.problems.append(f"{tid} saw upstream {msg.upstream}")
        if tid in self.failing and tid not in self.fixed:
            e = TaskFailed(task_id=tid, occurred_at=NOW, producer="ex", attempt=msg.attempt, error="E", permanent=True)
        elif tid in self.flaky and msg.attempt == 1:
            e = TaskFailed(task_id=tid, occurred_at=NOW, producer="ex", attempt=msg.attempt, error="again")
        else:
            e = TaskSucceeded(task_id=tid, occurred_at=NOW, producer="ex", attempt=msg.attempt,
                              result=codec.dumps_json({"ok": tid}))
        self.append(tid, codec.encode(e))

    def redrive(self, tid: str) -> None:
        """A user re-drives ``tid`` (from the CLI or the API); a failing task has been fixed in the meantime."""
        s = self.states.get(tid)
        if s is not None and s.status == "failed":
            self.fixed.add(tid)
        self.redrives += 1
        self.append(tid, codec.encode(TaskRedriven(task_id=tid, occurred_at=NOW, producer="cli", reason="fixed")))

    def in_status(self, *statuses: str) -> list[str]:
        return sorted(t for t in self.deps if t in self.states and self.states[t].status in statuses)

    def run(self, max_crashes: int, redrive_rate: float = 0.0) -> None:
        rng = self.rng
        while True:
            todo = self.deliverable()
            if not todo and not self.ready:
                return
            r = rng.random()
            if rng.random() < redrive_rate and self.redrives < 10:  # bounded: each one makes more work
                failed = self.in_status("failed")
                pick = failed if failed and rng.random() < 0.8 else sorted(self.states)
                if pick:
                    self.redrive(rng.choice(pick))
            if self.ready and (not todo or r < 0.25):
                self.execute()
            elif r < 0.29 and self.crashes < max_crashes:
                started = [t for t in self.fifo if self.pos[t] > 0]
                if started:
                    self.crash(rng.choice(started))
            elif r < 0.33 and self.crashes < max_crashes and todo:
                tid = rng.choice(todo)
                self.crashes += 1
                self.deliver(tid, lose_outputs=True)
            else:
                self.deliver(rng.choice(todo))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(20, 150),
    seed=st.integers(0, 2**32 - 1),
    fail_rate=st.sampled_from([0.0, 0.03, 0.1, 0.3]),
    max_crashes=st.sampled_from([0, 5, 40]),
    redrive_rate=st.sampled_from([0.0, 0.0, 0.01, 0.05]),
    redrive_after=st.sampled_from([0.0, 0.5, 1.0]),
)
def test_random_dags_end_in_the_implied_statuses(n, seed, fail_rate, max_crashes, redrive_rate, redrive_after):
    rng = random.Random(seed)
    deps = random_dag(rng, n)
    failing = {t for t in deps if rng.random() < fail_rate}
    flaky = {t for t in deps if t not in failing and rng.random() < 0.1}
    expected = implied(deps, failing)

    log = Log(rng, deps, failing, flaky)
    for tid, ds in deps.items():
        e = TaskCreated(task_id=tid, occurred_at=NOW, producer="test", handler="h", depends_on=ds,
                        max_attempts=2 if tid in flaky else 1)
        log.append(tid, codec.encode(e))
    log.run(max_crashes, redrive_rate)
    # Once settled, re-drive a share of the failed tasks (and a few upstream_failed ones) and settle again.
    for _round in range(3):
        chosen = [t for t in log.in_status("failed") if rng.random() < redrive_after]
        chosen += [t for t in log.in_status("upstream_failed") if rng.random() < redrive_after / 4]
        if not chosen:
            break
        for t in chosen:
            log.redrive(t)
        log.run(max_crashes, redrive_rate)
    expected = implied(deps, failing - log.fixed)

    assert log.problems == []
    final = {t: log.states[t].status for t in deps}
    wrong = {t: (final[t], expected[t]) for t in deps if final[t] != expected[t]}
    assert wrong == {}, f"(got, implied) per task: {wrong}"
    assert all(is_terminal(log.states[t]) for t in deps)
    assert not any(t.startswith("ghost") for t in log.states), "an unknown dependency got a state"
    for t in deps:
        if expected[t] == "upstream_failed":
            assert log.runs[t] == [], f"{t} ran though a dependency did not succeed"
        else:
            assert log.runs[t], f"{t} never ran"
            assert min(log.runs[t]) > max((log.first_succeeded[d] for d in deps[t]), default=0)
        if expected[t] == "succeeded":
            assert codec.loads_json(log.states[t].result) == {"ok": t}
    # Rebuilding from the log (a plain fold of each FIFO) gives the live tables.
    for t in deps:
        rebuilt = fold(codec.decode(v) for v in log.fifo[t])
        assert replace(log.states[t], last_offset=-1) == rebuilt, t


def test_a_diamond_with_every_delivery_order_of_two_tasks():
    """A smoke case by hand: the diamond of /tmp/dag.py plus an unknown dependency."""
    deps = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": ["zzz"]}
    for seed in range(50):
        log = Log(random.Random(seed), deps, set(), set())
        for tid, ds in deps.items():
            log.append(tid, codec.encode(TaskCreated(task_id=tid, occurred_at=NOW, producer="t", handler="h",
                                                     depends_on=ds)))
        log.run(10)
        assert {t: log.states[t].status for t in deps} == {
            "a": "succeeded", "b": "succeeded", "c": "succeeded", "d": "succeeded", "e": "upstream_failed"}
        assert log.problems == []


def redrive_by_hand(lose_redrive_outputs: bool) -> None:
    """a fails, b and c (b's dependent) and d (also on a ghost) are upstream_failed; re-drive a."""
    deps = {"a": [], "b": ["a"], "c": ["b"], "d": ["a", "zzz"], "e": []}
    for seed in range(30):
        rng = random.Random(seed)
        log = Log(rng, deps, {"a", "e"}, set())
        for tid, ds in deps.items():
            log.append(tid, codec.encode(TaskCreated(task_id=tid, occurred_at=NOW, producer="t", handler="h",
                                                     depends_on=ds)))
        log.run(10)
        assert {t: log.states[t].status for t in deps} == {
            "a": "failed", "b": "upstream_failed", "c": "upstream_failed", "d": "upstream_failed", "e": "failed"}
        log.redrive("a")
        if lose_redrive_outputs:  # the processor crashes after folding the redrive, before sending what follows
            while log.pos["a"] < len(log.fifo["a"]) - 1:
                log.deliver("a")
            log.deliver("a", lose_outputs=True)
        else:
            log.redrive("b")  # harmless: it re-opens, waits for a again
        log.run(10)
        assert {t: log.states[t].status for t in deps} == {
            "a": "succeeded", "b": "succeeded", "c": "succeeded", "d": "upstream_failed", "e": "failed"}
        assert log.problems == []
        assert (log.states["a"].attempt, log.states["a"].attempt_offset) == (2, 1)
        for t in deps:
            assert replace(log.states[t], last_offset=-1) == fold(codec.decode(v) for v in log.fifo[t]), t


def test_redriving_a_fixed_failure_brings_its_dependents_back():
    redrive_by_hand(lose_redrive_outputs=False)


def test_a_crash_right_after_a_redrive_still_brings_its_dependents_back():
    redrive_by_hand(lose_redrive_outputs=True)
