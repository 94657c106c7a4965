"""What the read model keeps for ``/api/v1/stats``: counts, the queued index, recent finishes (no broker)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from taskstream.api.read_model import FINISHED_WINDOW_S, TaskStore
from taskstream.schemas import Status, TaskState


def state(task_id: str, status: str, *, priority: str = "medium", version: int = 1, at: datetime | None = None,
          finished_at: datetime | None = None) -> TaskState:
    at = at or datetime.now(UTC)
    return TaskState(task_id=task_id, handler="h", status=status, priority=priority, payload="{}",
                     created_at=at - timedelta(hours=1), updated_at=at, version=version, finished_at=finished_at)


def queued_keys(store: TaskStore) -> int:
    return sum(1 for _ in store._scan(b"q:", None))


def test_counts_oldest_queued_and_recent_finishes_follow_each_task(tmp_path: Path) -> None:
    now = datetime.now(UTC)  # finishes are recent relative to the wall clock when they are applied
    store = TaskStore(tmp_path / "rm")
    try:
        store.apply(state("a", "queued", priority="high", at=now - timedelta(seconds=30)))
        store.apply(state("b", "queued", at=now - timedelta(seconds=50)))
        store.apply(state("c", "pending", priority="low"))
        assert store.counts() == Counter({("queued", "high"): 1, ("queued", "medium"): 1, ("pending", "low"): 1})
        assert store.oldest_queued().task_id == "b" and queued_keys(store) == 2

        store.apply(state("b", "succeeded", version=2, finished_at=now - timedelta(seconds=1)))
        assert store.oldest_queued().task_id == "a" and queued_keys(store) == 1
        assert store.finished_recently(now) == Counter({"succeeded": 1})
        store.apply(state("b", "succeeded", version=2, finished_at=now - timedelta(seconds=1)))  # replayed
        assert store.finished_recently(now) == Counter({"succeeded": 1})
        assert store.finished_recently(now + timedelta(seconds=FINISHED_WINDOW_S)) == Counter()

        store.apply(state("a", "succeeded", version=1))  # the same version as stored: applied
        store.apply(state("a", "queued", priority="high", version=0))  # older: ignored
        assert store.oldest_queued() is None and queued_keys(store) == 0
        store.apply(state("d", "failed", finished_at=now - timedelta(hours=2)))  # long ago: not recent
        assert store.finished_recently(now) == Counter({"succeeded": 1})  # "a" has no finished_at
        assert store.counts() == Counter({("succeeded", "medium"): 2, ("pending", "low"): 1, ("failed", "medium"): 1})
    finally:
        store.close()


@given(st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from([s.value for s in Status]),
                          st.sampled_from(["high", "medium", "low"]), st.integers(0, 4), st.integers(0, 120)),
                max_size=30))
def test_counts_and_queued_index_equal_a_brute_force_view(tmp_path_factory, seq) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    store = TaskStore(tmp_path_factory.mktemp("rm") / "db")
    try:
        for tid, status, priority, version, ago in seq:
            store.apply(state(tid, status, priority=priority, version=version, at=now - timedelta(seconds=ago)))
        states = list(store.all_states())
        assert store.counts() == Counter((s.status, s.priority) for s in states)
        queued = [s for s in states if s.status == "queued"]
        assert queued_keys(store) == len(queued)
        oldest = store.oldest_queued()
        assert (oldest is None) == (not queued)
        if queued:
            assert oldest.updated_at == min(s.updated_at for s in queued)
    finally:
        store.close()


def test_a_reopened_store_counts_what_it_holds(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "rm")
    store.apply(state("a", "queued"))
    store.apply(state("b", "running", priority="low"))
    store.close()
    again = TaskStore(tmp_path / "rm", fresh=False)
    try:
        assert again.counts() == Counter({("queued", "medium"): 1, ("running", "low"): 1})
    finally:
        again.close()
