"""No task waits on what can never happen (issue 25): a self-dependency or a cycle through derived ids.

The API's check (``dependency_problems``: the request's tasks and the
waiting tasks of the read model, within ``MAX_CYCLE_WALK``) and the
processor's (a registration a pending task receives from itself or from a
task it waits for resolves ``unknown``), the latter run on a pure log of
several tasks in any order of delivery.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from graphlib import CycleError, TopologicalSorter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskstream.schemas import (
    DependencyRegistered,
    DependencyResolved,
    Event,
    Status,
    TaskCreated,
    TaskState,
    ValidationError,
)
from taskstream.streams.domain import (
    UNKNOWN,
    RedriveTask,
    check_dependencies,
    decide,
    dependency_problems,
    dependents_of,
    evolve,
    initial_state,
    react,
    recorded,
    waits_on,
    with_dependents,
)

T0 = datetime(2024, 1, 1, 12, tzinfo=UTC)


def pending(task_id: str, depends_on: list[str], resolved: dict[str, str] | None = None) -> TaskState:
    state = initial_state(created(task_id, depends_on))
    if resolved:
        failed = any(o != Status.SUCCEEDED.value for o in resolved.values())
        state = replace(state, resolved=resolved, status=Status.UPSTREAM_FAILED.value if failed else state.status)
    return state


def created(task_id: str, depends_on: list[str]) -> TaskCreated:
    return TaskCreated(event_id=f"c-{task_id}", task_id=task_id, occurred_at=T0, producer="api", name="",
                       handler="h", priority="medium", payload="null", depends_on=depends_on)


# ------------------------------------------------------------------ the API's check


def test_a_task_naming_its_own_id_is_refused_naming_that_dependency() -> None:
    problems = dependency_problems([("", "k1", ["other", "k1"])])
    assert [f for f, _ in problems] == ["depends_on[1]"] and "cannot wait for itself" in problems[0][1]
    with pytest.raises(ValidationError) as err:
        check_dependencies([("tasks[3].", "k1", ["k1"])])
    assert err.value.field == "tasks[3].depends_on[0]"


def test_two_tasks_of_a_batch_naming_each_other_are_both_refused() -> None:
    problems = dependency_problems([("tasks[0].", "a", ["b"]), ("tasks[1].", "b", ["a"])])
    assert problems == [("tasks[0].depends_on[0]", "dependency cycle: a -> b -> a: no task on it could ever start"),
                        ("tasks[1].depends_on[0]", "dependency cycle: b -> a -> b: no task on it could ever start")]


def test_a_longer_cycle_names_its_whole_path_and_spares_tasks_off_it() -> None:
    tasks = [("tasks[0].", "a", ["x", "b"]), ("tasks[1].", "b", ["c"]), ("tasks[2].", "c", ["a"]),
             ("tasks[3].", "d", ["a"])]  # d waits for the cycle but is not on it: a's refusal is enough
    problems = dict(dependency_problems(tasks))
    assert set(problems) == {"tasks[0].depends_on[1]", "tasks[1].depends_on[0]", "tasks[2].depends_on[0]"}
    assert "a -> b -> c -> a" in problems["tasks[0].depends_on[1]"]


def test_a_batch_whose_tasks_depend_on_each_other_without_a_cycle_passes() -> None:
    chain = [(f"tasks[{i}].", f"t{i}", [f"t{i + 1}"] if i < 999 else []) for i in range(1000)]
    assert dependency_problems(chain) == []
    assert dependency_problems([("", "new", ["done", "unknown-id"])], {"done": pending("done", [])}.get) == []


def test_a_cycle_closed_through_a_waiting_task_of_the_read_model_is_refused() -> None:
    # written earlier with a key: "e" waits for the id that key K2 derives, which this request now creates
    read_model = {"e": pending("e", ["k2"]), "f": pending("f", ["e"])}
    problems = dependency_problems([("", "k2", ["f"])], read_model.get)
    assert [f for f, _ in problems] == ["depends_on[0]"] and "k2 -> f -> e -> k2" in problems[0][1]


def test_a_waiting_task_whose_dependency_already_resolved_closes_no_cycle() -> None:
    # the processor folded e's registration with the then-unknown k2: e is upstream_failed, it waits for nothing
    read_model = {"e": pending("e", ["k2"], resolved={"k2": UNKNOWN})}
    assert waits_on(read_model["e"]) == []
    assert dependency_problems([("", "k2", ["e"])], read_model.get) == []


def test_the_walk_through_the_read_model_is_bounded() -> None:
    read_model = {f"e{i}": pending(f"e{i}", [f"e{i + 1}"]) for i in range(50)}
    read_model["e50"] = pending("e50", ["new"])
    reads: list[str] = []

    def known(task_id: str) -> TaskState | None:
        reads.append(task_id)
        return read_model.get(task_id)

    assert dependency_problems([("", "new", ["e0"])], known, walk_limit=60) != []
    reads.clear()
    assert dependency_problems([("", "new", ["e0"])], known, walk_limit=10) == []  # beyond the bound: not seen
    assert len(reads) == 10


GRAPHS = st.integers(1, 8).flatmap(lambda n: st.tuples(
    st.just(n),
    st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n + 3)), max_size=3 * n),  # n.. n+3: existing tasks
    st.lists(st.tuples(st.integers(n, n + 3), st.integers(0, n + 3)), max_size=8),
))


@given(GRAPHS)
def test_no_accepted_batch_contains_a_cycle_and_every_task_on_one_is_named(graph) -> None:
    n, new_edges, old_edges = graph
    deps: dict[str, list[str]] = {f"t{i}": [] for i in range(n + 4)}
    for a, b in new_edges + old_edges:
        if f"t{b}" not in deps[f"t{a}"]:
            deps[f"t{a}"].append(f"t{b}")
    request = [(f"tasks[{i}].", f"t{i}", deps[f"t{i}"]) for i in range(n)]
    read_model = {f"t{i}": pending(f"t{i}", deps[f"t{i}"]) for i in range(n, n + 4)}
    problems = dependency_problems(request, read_model.get)
    named = {field.split(".")[0] for field, _ in problems}
    on_cycles: set[str] = set()
    sorter = TopologicalSorter(deps)
    try:
        sorter.prepare()
    except CycleError:
        for i in range(n):  # t_i is on a cycle: one of its dependencies reaches it back
            seen, todo = set(), list(deps[f"t{i}"])
            while todo:
                node = todo.pop()
                if node not in seen:
                    seen.add(node)
                    todo += deps[node]
            if f"t{i}" in seen:
                on_cycles.add(f"tasks[{i}]")
    assert named == on_cycles  # so an accepted request (no problem) puts no task of its own on a cycle


# ------------------------------------------------------------------ the processor's rule


def run(events: list[Event], order: st.DataObject | None = None, limit: int = 200,
        states: dict[str, TaskState] | None = None) -> dict[str, TaskState]:
    """Fold events (and what ``react`` appends) for several tasks until nothing is left, in any delivery order."""
    states = dict(states or {})
    edges: dict[str, set[str]] = {}  # the processor's edge records (domain.recorded), shown in ``dependents``
    queue = list(events)
    for step in range(limit):
        if not queue:
            return {t: with_dependents(s, edges.get(t, ())) for t, s in states.items()}
        i = order.draw(st.integers(0, len(queue) - 1)) if order is not None else 0
        event = queue.pop(i)
        before = states.get(event.task_id)
        if (edge := recorded(before, event)) is not None:
            edges.setdefault(edge.task_id, set()).add(edge.dependent)
        after = evolve(before, event)
        if after is not None:
            states[event.task_id] = after
        dependents = dependents_of(after, edges.get(event.task_id, ())) if after is not None else []
        queue += react(before, after, event, T0 + timedelta(seconds=step), dependents)
    raise AssertionError("still deciding after the limit")


def test_a_registration_with_itself_resolves_unknown() -> None:
    state = evolve(initial_state(created("x", ["x"])), registered := DependencyRegistered(
        event_id="r", task_id="x", occurred_at=T0, producer="processor", dependent="x"))
    (resolved,) = react(state, state, registered, T0)
    assert isinstance(resolved, DependencyResolved)
    assert (resolved.task_id, resolved.upstream, resolved.outcome) == ("x", "x", UNKNOWN)


def test_a_self_dependency_in_the_log_ends_upstream_failed() -> None:
    states = run([created("x", ["x"])])
    assert states["x"].status == Status.UPSTREAM_FAILED.value and states["x"].error == "dependency x unknown"


@given(st.data())
def test_a_cycle_written_to_the_log_ends_every_task_on_it_in_any_delivery_order(data) -> None:
    states = run([created("a", ["b"]), created("b", ["a"]), created("c", ["a"])], order=data)
    assert {t: s.status for t, s in states.items()} == dict.fromkeys("abc", Status.UPSTREAM_FAILED.value)


def test_a_registration_from_a_task_the_upstream_does_not_wait_for_still_waits() -> None:
    upstream = initial_state(created("u", ["v"]))
    e = DependencyRegistered(event_id="r", task_id="u", occurred_at=T0, producer="processor", dependent="d")
    after = evolve(upstream, e)
    assert react(upstream, after, e, T0) == [] and recorded(upstream, e) is e


@given(st.data())
def test_re_driving_a_task_on_a_cycle_ends_again_without_cascading_around_it(data) -> None:
    states = run([created("a", ["b"]), created("b", ["a"]), created("x", ["x"])], order=data)
    redrives = [e for t in ("a", "x") for e in decide(states[t], RedriveTask(task_id=t, producer="api"), T0)]
    states = run(redrives, order=data, states=states)  # ends (run raises past its limit)
    assert {t: s.status for t, s in states.items()} == dict.fromkeys("abx", Status.UPSTREAM_FAILED.value)
    assert all(t not in s.dependents for t, s in states.items()) and "b" not in states["a"].dependents
