"""Random DAGs on the real broker (issue 4, Tests): a processor and an executor, no API.

Two seeded random DAGs (200 and 1,000 tasks, ~3 dependencies each, ~3% of
nodes failing for good, a few unknown dependency ids) are written to
``<p>.events`` as TaskCreated events, one topological generation at a time
(each acknowledged before the next, so an upstream's TaskCreated is in the
log before its dependents register with it). Then ``<p>.state`` is read
until every task is terminal, and each must end in exactly the status the
DAG implies, with no task started before its dependencies finished.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections import Counter

import pytest

from taskstream.cli.dev import settings_env
from taskstream.schemas import Settings, TaskCreated, TaskState, Topics, codec
from taskstream.streams.domain import TERMINAL_VALUES
from tests.kafka_helpers import Component, TopicReader, now, producer, stop_all

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HANDLERS = '''\
from taskstream.executors import PermanentError, handler


@handler("dag")
def dag(payload, ctx):
    if payload.get("fail"):
        raise PermanentError("planned failure")
    return {"ok": payload["id"]}
'''


class ComponentIn(Component):
    """A ``taskstream <args>`` subprocess like ``Component``, run in ``cwd`` (where a handler module lives)."""

    def __init__(self, settings: Settings, *args: str, cwd, log_path=None) -> None:
        self.log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "taskstream.cli.main", *args],
            env={**os.environ, **settings_env(settings)},
            cwd=cwd,
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
        )


class StateTable:
    """The latest TaskState per task id, read from ``<p>.state`` as it grows."""

    def __init__(self, settings: Settings) -> None:
        self.reader = TopicReader(settings, Topics(settings.prefix).state)
        self.states: dict[str, TaskState] = {}

    def poll(self, max_messages: int = 500) -> dict[str, TaskState]:
        """Fold at most one batch, so a caller watching a threshold sees it crossed, not long past."""
        for m in self.reader.consumer.consume(max_messages, 0.1):
            if m.error() is not None or not m.value():
                continue  # a tombstone
            s = codec.decode(m.value())
            if isinstance(s, TaskState):  # <p>.state also holds schedules
                self.states[s.task_id] = s
        return self.states

    def until(self, predicate, timeout: float, message: str, procs=()):
        deadline = time.monotonic() + timeout
        while True:
            states = self.poll()
            if predicate(states):
                return states
            for p in procs:
                assert p.proc.poll() is None, f"{p.proc.args[3:]} exited with {p.proc.returncode}"
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {message}; {self.describe()}")

    def describe(self) -> str:
        """Statuses seen, with a few unfinished tasks, for a failure message."""
        counts = Counter(s.status for s in self.states.values())
        stuck = [(s.task_id, s.status, s.attempt, sorted(s.resolved.items()))
                 for s in self.states.values() if s.status not in TERMINAL_VALUES][:5]
        return f"{len(self.states)} tasks seen, {dict(counts)}; unfinished e.g. {stuck}"

    def close(self) -> None:
        self.reader.close()


def random_dag(rng: random.Random, n: int, prefix: str, group: int = 25) -> dict[str, list[str]]:
    """~3 dependencies per task, edges from lower to higher index only, ~1% unknown ids.

    Edges stay inside groups of ``group`` consecutive tasks (plus a few across),
    so a failure dooms its group's descendants, not nearly the whole DAG.
    """
    ids = [f"{prefix}-{i:04d}" for i in range(n)]
    deps = {}
    for i, tid in enumerate(ids):
        lo = i - i % group
        pool = ids[lo:i]
        ds = rng.sample(pool, min(len(pool), rng.choice([0, 1, 2, 3, 3, 4, 4, 5])))
        if i >= group and rng.random() < 0.05:
            ds.append(rng.choice(ids[:lo]))
        if rng.random() < 0.01:
            ds.append(f"{prefix}-ghost-{i}")
        deps[tid] = list(dict.fromkeys(ds))
    return deps


def implied(deps: dict[str, list[str]], failing: set[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for tid, ds in deps.items():  # insertion order is topological
        if any(out.get(d) != "succeeded" for d in ds):
            out[tid] = "upstream_failed"
        else:
            out[tid] = "failed" if tid in failing else "succeeded"
    return out


def generations(deps: dict[str, list[str]]) -> list[list[str]]:
    depth: dict[str, int] = {}
    for tid, ds in deps.items():
        depth[tid] = 1 + max((depth[d] for d in ds if d in depth), default=-1)
    gens: list[list[str]] = [[] for _ in range(max(depth.values()) + 1)]
    for tid, d in depth.items():
        gens[d].append(tid)
    return gens


def write_in_generations(settings: Settings, gens: list[list[str]], make) -> None:
    """One generation at a time, each acknowledged (flushed) before the next is produced."""
    p = producer(settings)
    events = Topics(settings.prefix).events
    for gen in gens:
        for tid in gen:
            e = make(tid)
            p.produce(events, codec.encode(e), e.task_id.encode(), headers=codec.headers(e))
        assert p.flush(10) == 0


def assert_started_after_dependencies(states: dict[str, TaskState], deps: dict[str, list[str]]) -> None:
    late = []
    for tid, ds in deps.items():
        s = states[tid]
        if s.started_at is None:
            continue
        for d in ds:
            f = states[d].finished_at if d in states else None
            if f is None or s.started_at < f:
                late.append((tid, d, s.started_at, f))
    assert late == [], f"started before a dependency finished: {late[:5]}"


@pytest.mark.parametrize(("seed", "n", "timeout"), [(4, 200, 90), (1000, 1000, 180)], ids=["200", "1000"])
def test_random_dag_ends_in_the_implied_statuses(settings, tmp_path, seed, n, timeout):
    rng = random.Random(seed)
    deps = random_dag(rng, n, f"s{seed}")
    failing = {t for t in deps if rng.random() < 0.03}
    expected = implied(deps, failing)
    gens = generations(deps)

    (tmp_path / "dag_handlers.py").write_text(HANDLERS)
    proc = ComponentIn(settings, "processor", cwd=tmp_path, log_path=tmp_path / "processor.log")
    ex = ComponentIn(settings, "executor", "--handlers", "dag_handlers", "--concurrency", "8", cwd=tmp_path,
                     log_path=tmp_path / "executor.log")
    table = StateTable(settings)
    t0 = time.monotonic()
    try:
        created_at = now()

        def make(tid: str) -> TaskCreated:
            return TaskCreated(task_id=tid, occurred_at=created_at, producer="test", handler="dag",
                               payload=codec.dumps_json({"id": tid, "fail": tid in failing}),
                               depends_on=deps[tid], max_attempts=1)

        write_in_generations(settings, gens, make)
        written = time.monotonic() - t0
        states = table.until(
            lambda s: all(t in s and s[t].status in ("succeeded", "failed", "upstream_failed", "cancelled")
                          for t in deps),
            timeout=timeout, message=f"{n} tasks terminal", procs=(proc, ex),
        )
        elapsed = time.monotonic() - t0
        got = {t: states[t].status for t in deps}
        wrong = {t: (got[t], expected[t]) for t in deps if got[t] != expected[t]}
        assert wrong == {}, f"{len(wrong)} tasks not in the implied status (got, implied): {list(wrong.items())[:10]}"
        assert not [t for t in states if "ghost" in t], "an unknown dependency got a state"
        assert_started_after_dependencies(states, deps)
        for t, status in expected.items():
            s = states[t]
            if status == "succeeded":
                assert codec.loads_json(s.result) == {"ok": t}
            elif status == "failed":
                assert s.error and "planned failure" in s.error
            else:
                assert s.started_at is None and s.attempt == 0, f"{t} ran though a dependency did not succeed"
        counts = {k: sum(1 for v in expected.values() if v == k) for k in ("succeeded", "failed", "upstream_failed")}
        print(f"\nDAG of {n} tasks in {len(gens)} generations: {counts}; written in {written:.1f}s, "
              f"all terminal after {elapsed:.1f}s")
    finally:
        table.close()
        stop_all(ex, proc)
