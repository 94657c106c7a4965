"""The pure parts of the read bounds (issue 12): the list scan budget and the sub-minute cron check."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from taskstream.api.read_model import TaskStore
from taskstream.schemas import ValidationError
from taskstream.schemas import cron as cron_expr
from tests.unit.test_read_model import state


@pytest.fixture
def store(tmp_path: Path):
    s = TaskStore(tmp_path / "rm")
    yield s
    s.close()


def labelled(task_id: str, created: int, **labels: str):
    return replace(state(task_id, created=created), labels=labels)


def test_a_spent_scan_budget_returns_the_page_so_far_and_where_to_go_on(store: TaskStore) -> None:
    # newest first: t9 .. t0; only t5 and t1 match
    for i in range(10):
        store.apply(labelled(f"t{i}", i, team="x" if i in (5, 1) else "y"))
    examined = []
    real_get = store.get
    store.get = lambda task_id: examined.append(task_id) or real_get(task_id)
    page, cursor = store.list(labels={"team": "x"}, limit=5, max_scan=3)
    assert (page, examined) == ([], ["t9", "t8", "t7"])
    examined.clear()
    page, cursor = store.list(labels={"team": "x"}, limit=5, max_scan=3, after=cursor)
    assert ([s.task_id for s in page], examined) == (["t5"], ["t6", "t5", "t4"])
    page, cursor = store.list(labels={"team": "x"}, limit=5, max_scan=3, after=cursor)
    assert [s.task_id for s in page] == ["t1"] and cursor is not None  # t0 remains unexamined
    page, cursor = store.list(labels={"team": "x"}, limit=5, max_scan=3, after=cursor)
    assert (page, cursor) == ([], None)


def test_a_budget_that_reaches_the_end_gives_no_cursor(store: TaskStore) -> None:
    for i in range(3):
        store.apply(labelled(f"t{i}", i, team="y"))
    assert store.list(labels={"team": "x"}, max_scan=3) == ([], None)
    assert store.list(labels={"team": "x"}, max_scan=2)[1] is not None
    with pytest.raises(ValueError):
        store.list(max_scan=0)


@hsettings(max_examples=40)
@given(st.lists(st.booleans(), max_size=30), st.integers(1, 7), st.integers(1, 7))
def test_paging_under_any_budget_finds_what_an_unbounded_list_finds(tmp_path_factory, matches, limit, budget):
    s = TaskStore(tmp_path_factory.mktemp("rm") / "rm")
    try:
        for i, m in enumerate(matches):
            s.apply(labelled(f"t{i:02d}", i, team="x" if m else "y"))
        found, cursor, pages = [], None, 0
        while True:
            page, cursor = s.list(labels={"team": "x"}, limit=limit, max_scan=budget, after=cursor)
            assert len(page) <= limit
            found += [t.task_id for t in page]
            pages += 1
            if cursor is None:
                break
        assert found == [f"t{i:02d}" for i in reversed(range(len(matches))) if matches[i]]
        assert pages <= len(matches) // budget + len(found) // limit + 2
    finally:
        s.close()


@pytest.mark.parametrize("expr", ["* * * * * *", "* * * * * */10", "0 9 * * * 0,30", "*/5 * * * * 0-59",
                                  "0 9 * * * 0-0"])  # croniter reads 0-0 as every second: refused, as it fires
def test_a_cron_firing_more_than_once_a_minute_is_refused_naming_cron(expr: str) -> None:
    assert cron_expr.fires_more_than_once_a_minute(expr)
    with pytest.raises(ValidationError) as err:
        cron_expr.check_sub_minute(expr, allowed=False)
    assert err.value.field == "cron" and "allow_second_cron" in err.value.message
    cron_expr.check_sub_minute(expr, allowed=True)


@pytest.mark.parametrize("expr", ["* * * * *", "*/5 * * * *", "* * * * * 30", "0 9 * * 1-5 0"])
def test_a_cron_firing_at_most_once_a_minute_passes(expr: str) -> None:
    assert not cron_expr.fires_more_than_once_a_minute(expr)
    cron_expr.check_sub_minute(expr, allowed=False)
