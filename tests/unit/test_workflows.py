"""Workflows on the read side: the overall-status rule, the read model's summaries and list, the task order."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskstream.api.read_model import TaskStore, WorkflowSummary
from taskstream.api.reads import topological
from taskstream.schemas import TERMINAL, Status, TaskState, WorkflowStatus
from taskstream.streams.domain import workflow_status

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def task(task_id: str, wf: str | None = "w1", *, status: str = "pending", version: int = 1, created: int = 0,
         started: int | None = None, finished: int | None = None, depends_on: tuple[str, ...] = (),
         key: str | None = None) -> TaskState:
    at = T0 + timedelta(seconds=created)
    return TaskState(task_id=task_id, handler="h", status=status, priority="medium", payload="{}", created_at=at,
                     updated_at=at + timedelta(seconds=version), version=version, workflow_id=wf,
                     key=key or task_id, depends_on=list(depends_on),
                     started_at=None if started is None else T0 + timedelta(seconds=started),
                     finished_at=None if finished is None else T0 + timedelta(seconds=finished))


@pytest.fixture
def store(tmp_path: Path):
    s = TaskStore(tmp_path / "rm")
    yield s
    s.close()


# ------------------------------------------------------------------ the rule


@pytest.mark.parametrize(("counts", "expected"), [
    ({}, "running"),
    ({"succeeded": 3}, "succeeded"),
    ({"succeeded": 2, "running": 1}, "running"),
    ({"failed": 1, "pending": 1}, "running"),  # an independent branch still runs
    ({"failed": 1, "upstream_failed": 2, "succeeded": 1}, "failed"),
    ({"cancelled": 1, "upstream_failed": 2}, "cancelled"),
    ({"cancelled": 1, "failed": 1}, "failed"),
    ({"upstream_failed": 1, "succeeded": 1}, "failed"),
    ({"succeeded": 1, "failed": 0}, "succeeded"),
])
def test_workflow_status_rule(counts: dict[str, int], expected: str) -> None:
    assert workflow_status(counts) == expected


@given(st.dictionaries(st.sampled_from([s.value for s in Status]), st.integers(0, 3)))
def test_running_exactly_while_a_task_is_not_terminal(counts: dict[str, int]) -> None:
    open_tasks = any(n and s not in TERMINAL for s, n in counts.items())
    assert (workflow_status(counts) == WorkflowStatus.RUNNING) == (open_tasks or not any(counts.values()))


# --------------------------------------------------------------- summaries


def test_summary_follows_its_tasks(store: TaskStore) -> None:
    store.apply(task("a"))
    store.apply(task("b", depends_on=("a",)))
    store.apply(task("other", wf=None))
    s = store.workflow("w1")
    assert (s.status, dict(s.counts), s.tasks, s.started_at, s.finished_at) == ("running", {"pending": 2}, 2, None,
                                                                                None)
    store.apply(task("a", status="running", version=2, started=1))
    store.apply(task("a", status="succeeded", version=3, started=1, finished=2))
    store.apply(task("b", status="running", version=2, started=3))
    assert store.workflow("w1").finished_at is None
    store.apply(task("b", status="succeeded", version=3, started=3, finished=5))
    s = store.workflow("w1")
    assert (s.status, dict(s.counts)) == ("succeeded", {"succeeded": 2})
    assert (s.started_at, s.finished_at) == (T0 + timedelta(seconds=1), T0 + timedelta(seconds=5))
    assert store.workflow("missing") is None


def test_a_replayed_or_older_state_does_not_count_twice(store: TaskStore) -> None:
    store.apply(task("a", status="running", version=2))
    store.apply(task("a", status="running", version=2))  # the same state again (a replay)
    store.apply(task("a", status="pending", version=1))  # older: ignored
    assert dict(store.workflow("w1").counts) == {"running": 1}


def test_summary_encoding_round_trips() -> None:
    s = WorkflowSummary.first(task("a", status="failed", started=1, finished=2)).apply(None, task("b"))
    assert WorkflowSummary.decode("w1", s.encode()) == s


def test_list_newest_first_by_status_with_cursor(store: TaskStore) -> None:
    for i in range(5):
        store.apply(task(f"t{i}", wf=f"w{i}", created=i))
    store.apply(task("t1", wf="w1", created=1, status="failed", version=2, finished=3))
    store.apply(task("t3", wf="w3", created=3, status="succeeded", version=2, finished=4))
    page, after = store.list_workflows(limit=2)
    assert [w.workflow_id for w in page] == ["w4", "w3"] and after is not None
    page, after = store.list_workflows(limit=2, after=after)
    assert [w.workflow_id for w in page] == ["w2", "w1"]
    page, after = store.list_workflows(limit=2, after=after)
    assert [w.workflow_id for w in page] == ["w0"] and after is None
    assert [w.workflow_id for w in store.list_workflows(status="running")[0]] == ["w4", "w2", "w0"]
    assert [w.workflow_id for w in store.list_workflows(status="failed")[0]] == ["w1"]
    # a re-driven task takes its workflow back to running: it leaves the failed index
    store.apply(task("t1", wf="w1", created=1, status="queued", version=3))
    assert store.list_workflows(status="failed")[0] == []
    assert [w.workflow_id for w in store.list_workflows(status="running")[0]] == ["w4", "w2", "w1", "w0"]


def test_workflow_tasks_are_only_its_own(store: TaskStore) -> None:
    for i in range(3):
        store.apply(task(f"a{i}", wf="wa"))
        store.apply(task(f"b{i}", wf="wb"))
    assert sorted(t.task_id for t in store.workflow_tasks("wa", 10)) == ["a0", "a1", "a2"]
    assert len(store.workflow_tasks("wa", 2)) == 2


def test_topological_generations_by_key() -> None:
    d = task("d", depends_on=("b", "c"), key="d")
    c = task("c", depends_on=("a",), key="c")
    b = task("b", depends_on=("a", "outside"), key="b")
    a = task("a", key="a")
    z = task("z", key="z")
    assert [t.key for t in topological([d, c, z, b, a])] == ["a", "z", "b", "c", "d"]
    chain = [task(f"c{i}", depends_on=(f"c{i - 1}",) if i else ()) for i in range(1500)]
    assert [t.task_id for t in topological(list(reversed(chain)))] == [t.task_id for t in chain]


def test_summary_times_keep_the_earliest_start(store: TaskStore) -> None:
    store.apply(task("a", status="running", version=2, started=1))
    store.apply(replace(task("a", status="running", version=4, started=9)))  # a later attempt
    assert store.workflow("w1").started_at == T0 + timedelta(seconds=1)
