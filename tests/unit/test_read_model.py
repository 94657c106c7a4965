"""The read model's store and indexes (RocksDB in a temp dir, no broker)."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from taskstream.api.read_model import TaskStore, index_keys, is_sortkey
from taskstream.schemas import Status, TaskState

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
STATUSES = [s.value for s in Status]
PRIORITIES = ["high", "medium", "low"]
HANDLERS = ["a", "b", "x:y", "ünï/cödé"]


def state(task_id: str, *, created: int = 0, version: int = 1, status: str = "pending",
          priority: str = "medium", handler: str = "a") -> TaskState:
    at = T0 + timedelta(seconds=created)
    return TaskState(task_id=task_id, handler=handler, status=status, priority=priority, payload="{}",
                     created_at=at, updated_at=at, version=version)


@pytest.fixture
def store(tmp_path: Path):
    s = TaskStore(tmp_path / "rm")
    yield s
    s.close()


def index_count(store: TaskStore) -> int:
    it = store._db.iter()
    it.seek(b"x:")
    n = 0
    while it.valid() and it.key().startswith(b"x:"):
        n += 1
        it.next()
    del it
    return n


def test_apply_keeps_the_newest_version(store: TaskStore) -> None:
    assert store.apply(state("t1", version=2, status="queued"))
    assert not store.apply(state("t1", version=1, status="pending"))
    assert store.get("t1").status == "queued"
    assert store.apply(state("t1", version=2, status="queued"))  # equal version: harmless replay
    assert store.apply(state("t1", version=3, status="succeeded"))
    assert store.get("t1").status == "succeeded"
    assert store.get("missing") is None


def test_update_moves_index_entries(store: TaskStore) -> None:
    store.apply(state("t1", status="pending", priority="low", handler="a"))
    store.apply(state("t1", version=2, status="running", priority="high", handler="b"))
    assert store.list(status="pending")[0] == []
    assert store.list(priority="low")[0] == []
    assert store.list(handler="a")[0] == []
    assert [t.task_id for t in store.list(status="running")[0]] == ["t1"]
    assert [t.task_id for t in store.list(priority="high", handler="b")[0]] == ["t1"]
    assert index_count(store) == len(index_keys(store.get("t1")))


def test_list_is_newest_first_with_ties_by_id_and_pages_by_cursor(store: TaskStore) -> None:
    for i, tid in enumerate(["a1", "a2", "a3", "a4", "a5"]):
        store.apply(state(tid, created=i))
    store.apply(state("a0", created=4))  # same created_at as a5: ties ordered by id
    expected = ["a0", "a5", "a4", "a3", "a2", "a1"]
    assert [t.task_id for t in store.list(limit=100)[0]] == expected
    seen, cursor = [], None
    while True:
        page, cursor = store.list(limit=4, after=cursor)
        seen += [t.task_id for t in page]
        if cursor is None:
            break
        assert is_sortkey(cursor)
    assert seen == expected


def test_a_full_last_page_has_no_cursor(store: TaskStore) -> None:
    for i in range(4):
        store.apply(state(f"t{i}", created=i))
    page, cursor = store.list(limit=4)
    assert len(page) == 4 and cursor is None


def test_store_is_rebuilt_fresh(tmp_path: Path) -> None:
    s = TaskStore(tmp_path / "rm")
    s.apply(state("t1"))
    s.close()
    s = TaskStore(tmp_path / "rm")
    assert s.get("t1") is None and s.list()[0] == []
    s.close()


updates = st.lists(
    st.builds(
        lambda tid, created, version, status, priority, handler: state(
            tid, created=created, version=version, status=status, priority=priority, handler=handler
        ),
        st.sampled_from([f"t{i}" for i in range(6)]),
        st.integers(0, 3),
        st.integers(0, 5),
        st.sampled_from(STATUSES[:5]),
        st.sampled_from(PRIORITIES),
        st.sampled_from(HANDLERS),
    ),
    max_size=30,
)


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(updates, st.integers(1, 4))
def test_lists_equal_a_brute_force_filter(seq: list[TaskState], limit: int) -> None:
    """Any sequence of updates: every list (any filters, any page size) equals filtering a dict."""
    model: dict[str, TaskState] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = TaskStore(Path(tmp) / "rm")
        try:
            for s in seq:
                applied = store.apply(s)
                old = model.get(s.task_id)
                assert applied == (old is None or s.version >= old.version)
                if applied:
                    model[s.task_id] = s
            assert index_count(store) == 4 * len(model)
            for status in [None, *STATUSES[:5]]:
                for priority in [None, "high"]:
                    for handler in [None, "x:y"]:
                        want = sorted(
                            (t for t in model.values()
                             if (status is None or t.status == status)
                             and (priority is None or t.priority == priority)
                             and (handler is None or t.handler == handler)),
                            key=lambda t: (-t.created_at.timestamp(), t.task_id),
                        )
                        got, cursor = [], None
                        while True:
                            page, cursor = store.list(status=status, priority=priority, handler=handler,
                                                      limit=limit, after=cursor)
                            assert len(page) <= limit
                            got += page
                            if cursor is None:
                                break
                        assert got == want
        finally:
            store.close()


def test_replace_keeps_other_fields(store: TaskStore) -> None:
    s = state("t1")
    store.apply(replace(s, version=2, result='{"ok": true}', status="succeeded"))
    assert store.get("t1").result == '{"ok": true}'


def test_label_filter_and_compare_and_set(store: TaskStore) -> None:
    a = replace(state("a", created=1), labels={"team": "x", "env": "prod"})
    b = replace(state("b", created=2), labels={"team": "x"})
    store.apply(a)
    store.apply(b)
    ids = lambda **kw: [s.task_id for s in store.list(**kw)[0]]  # noqa: E731
    assert ids(labels={"team": "x"}) == ["b", "a"]
    assert ids(labels={"team": "x", "env": "prod"}) == ["a"]
    assert ids(labels={"team": "y"}) == []
    assert ids(labels={"team": "x"}, status="pending", limit=1) == ["b"]

    assert not store.apply(replace(a, version=2, status="cancelled"), only_over_version=5)
    assert store.get("a").version == 1
    assert store.apply(replace(a, version=2, status="cancelled"), only_over_version=1)
    assert store.get("a").status == "cancelled"
    assert not store.apply(replace(a, version=3), only_over_version=1)


def test_prefix_searches_id_handler_and_name_with_the_other_filters(store: TaskStore) -> None:
    store.apply(replace(state("inv-1", created=1), handler="billing.send", name="march"))
    store.apply(replace(state("x-2", created=2), handler="report", name="invoice april"))
    store.apply(replace(state("x-3", created=3, status="succeeded"), handler="report", name="receipt"))
    assert [s.task_id for s in store.list(prefix="inv")[0]] == ["x-2", "inv-1"]  # name, id
    assert [s.task_id for s in store.list(prefix="billing.")[0]] == ["inv-1"]  # handler
    assert [s.task_id for s in store.list(prefix="x-", status="succeeded")[0]] == ["x-3"]
    assert store.list(prefix="nothing")[0] == []
    page, last = store.list(prefix="x-", limit=1)
    assert [s.task_id for s in page] == ["x-3"]
    assert [s.task_id for s in store.list(prefix="x-", after=last)[0]] == ["x-2"]
