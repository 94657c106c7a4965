"""The size limits the fold keeps by itself (schemas.limits): a task's state fits in one record whatever the log holds.

Dependents are edges outside the record, never refused however many
(an old log's ``too_many_dependents`` still folds), upstream results are carried only while
they fit the dependent's budget, error texts are cut, an oversized result or
checkpoint written past the executor's check is dropped. Then the worst case:
a state at every limit encodes to well under the record size.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from taskstream.schemas import (
    DependencyRegistered,
    DependencyResolved,
    Status,
    TaskCheckpointed,
    TaskCreated,
    TaskFailed,
    TaskQueued,
    TaskState,
    TaskSucceeded,
    codec,
    limits,
)
from taskstream.streams import domain
from taskstream.streams.domain import TOO_MANY_DEPENDENTS, evolve, fold, react

T0 = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def created(task_id: str, **kw) -> TaskCreated:
    return TaskCreated(task_id=task_id, occurred_at=T0, producer="api", handler="echo", payload="{}", max_attempts=3,
                       **kw)


def running(task_id: str = "t") -> TaskState:
    return fold([created(task_id), TaskQueued(task_id=task_id, occurred_at=at(1), producer="p", attempt=1,
                                              priority="medium")])


@settings(max_examples=30)
@given(st.integers(min_value=0, max_value=1500), st.sampled_from(["running", "succeeded"]))
def test_no_number_of_dependents_refuses_a_registration_or_grows_the_record(n: int, end: str) -> None:
    # Issue 25: a cap on dependents shared by every principal let one exhaust another's task. Dependents are
    # edges now (dependents.recorded): a registration is never refused, and the state record keeps its size.
    up = running("up")
    if end == "succeeded":
        up = evolve(up, TaskSucceeded(task_id="up", occurred_at=at(2), producer="e", attempt=1, result="1"))
    size = len(codec.encode(up))
    state, edges = up, []
    for i in range(n):
        reg = DependencyRegistered(task_id="up", occurred_at=at(3), producer="p", dependent=f"d{i}")
        edges.append(domain.recorded(state, reg))
        state = evolve(state, reg)
    assert [e.dependent for e in edges] == [f"d{i}" for i in range(n)]
    assert state.dependents == [] and len(codec.encode(state)) <= size + 8  # only the version grew
    late = DependencyRegistered(task_id="up", occurred_at=at(4), producer="p", dependent="late")
    out = react(state, evolve(state, late), late, at(4))
    assert [(e.outcome, e.result) for e in out] == ([] if end == "running" else [(Status.SUCCEEDED.value, "1")])


def test_a_task_with_many_dependents_resolves_every_one_when_it_ends() -> None:
    up = running("up")
    dependents = [f"d{i:05}" for i in range(10_000)]
    done = TaskSucceeded(task_id="up", occurred_at=at(2), producer="e", attempt=1, result="1")
    new, follow = domain.step(up, done, at(2), "proc", lambda: dependents)
    resolutions = [e for e in follow if isinstance(e, DependencyResolved)]
    assert [e.task_id for e in resolutions] == dependents and {e.outcome for e in resolutions} == {"succeeded"}
    assert len({e.event_id for e in resolutions}) == len(dependents)
    # the edges are asked only when the task owes its dependents something
    asked: list[int] = []
    domain.step(None, created("x"), at(1), "proc", lambda: asked.append(1) or [])
    assert asked == []


def test_a_dependent_refused_by_the_old_cap_still_folds_with_the_reason() -> None:
    # Logs written before issue 25 may hold this outcome; it folds as it did.
    dependent = fold([created("late", depends_on=["up"])])
    after = evolve(dependent, DependencyResolved(task_id="late", occurred_at=at(3), producer="p", upstream="up",
                                                 outcome=TOO_MANY_DEPENDENTS))
    assert after.status == Status.UPSTREAM_FAILED.value
    assert after.error == "dependency up has more than 1,000 dependents"


def _resolved(upstream: str, result: str | None) -> DependencyResolved:
    return DependencyResolved(task_id="fan", occurred_at=at(2), producer="p", upstream=upstream,
                              outcome=Status.SUCCEEDED.value, result=result)


def test_a_fan_in_of_large_results_carries_only_what_fits() -> None:
    ups = [f"u{i}" for i in range(16)]
    big = '"' + "x" * (63 * 1024) + '"'  # under the per-upstream bound, 16 of them over the total
    state = fold([created("fan", depends_on=ups), *(_resolved(u, big) for u in ups)])
    carried = [u for u in ups if state.upstream_results[u] != "null"]
    assert carried == ups[: limits.MAX_UPSTREAM_RESULTS_BYTES // len(big.encode())]
    assert sum(len(r.encode()) for r in state.upstream_results.values()) <= limits.MAX_UPSTREAM_RESULTS_BYTES
    assert state.status == Status.PENDING.value and domain.is_ready(state, at(3))  # dropped results do not fail it
    assert len(codec.encode(state)) < limits.MAX_RECORD_BYTES // 2


@given(st.lists(st.integers(min_value=0, max_value=2 * limits.MAX_UPSTREAM_RESULT_BYTES), min_size=1, max_size=40))
def test_upstream_results_never_pass_their_budget(sizes: list[int]) -> None:
    ups = [f"u{i}" for i in range(len(sizes))]
    events = [created("fan", depends_on=ups)]
    events += [_resolved(u, '"' + "y" * n + '"') for u, n in zip(ups, sizes, strict=True)]
    state = fold(events)
    held = sum(len(r.encode()) for r in state.upstream_results.values())
    assert held <= limits.MAX_UPSTREAM_RESULTS_BYTES + 4 * len(ups)  # "null" for each one not carried
    for u, n in zip(ups, sizes, strict=True):
        if state.upstream_results[u] != "null":
            assert n + 2 <= limits.MAX_UPSTREAM_RESULT_BYTES


def test_a_long_error_is_cut_with_a_note_of_its_size() -> None:
    failed = evolve(running(), TaskFailed(task_id="t", occurred_at=at(2), producer="e", attempt=1,
                                          error="E" * 1_000_000))
    assert len(failed.error) == limits.MAX_ERROR_CHARS
    assert failed.error.endswith(f"[cut: 1,000,000 characters > {limits.MAX_ERROR_CHARS:,}]")
    assert limits.cut_error("short") == "short"


def test_an_oversized_result_or_checkpoint_written_past_the_executor_is_dropped() -> None:
    big = '"' + "r" * limits.MAX_RESULT_BYTES + '"'
    done = evolve(running(), TaskSucceeded(task_id="t", occurred_at=at(2), producer="x", attempt=1, result=big))
    assert done.status == Status.SUCCEEDED.value and done.result is None
    assert done.error.startswith("result dropped: ")
    cp = TaskCheckpointed(task_id="t", occurred_at=at(2), producer="x", attempt=1,
                          data='"' + "c" * limits.MAX_CHECKPOINT_BYTES + '"')
    r = running()
    assert evolve(r, cp) is r


def test_the_worst_case_state_is_well_under_the_record_size() -> None:
    assert limits.worst_case_state_bytes() <= limits.MAX_RECORD_BYTES // 2
    n = limits.MAX_DEPENDENCIES
    long_id = "i" * limits.MAX_ID_CHARS

    def ident(prefix: str, i: int) -> str:
        return (f"{prefix}{i}" + long_id)[: limits.MAX_ID_CHARS]

    deps = [ident("u", i) for i in range(n)]
    state = TaskState(
        task_id=long_id, handler="h" * limits.MAX_HANDLER_CHARS, status=Status.SUCCEEDED.value, priority="medium",
        payload='"' + "p" * (limits.MAX_PAYLOAD_BYTES - 2) + '"', created_at=T0, updated_at=T0,
        name="n" * limits.MAX_NAME_CHARS,
        labels={("k" * limits.MAX_LABEL_KEY_CHARS)[:-3] + f"{i:03}": "v" * limits.MAX_LABEL_VALUE_CHARS
                for i in range(limits.MAX_LABELS)},
        depends_on=deps, resolved={d: Status.SUCCEEDED.value for d in deps},
        upstream_results={d: "null" for d in deps} | {deps[0]: '"' + "u" * limits.MAX_UPSTREAM_RESULTS_BYTES + '"'},
        upstream_keys={d: ident("k", i) for i, d in enumerate(deps)},
        dependents=[ident("d", i) for i in range(limits.LEGACY_MAX_DEPENDENTS)],  # an old record
        result='"' + "r" * (limits.MAX_RESULT_BYTES - 2) + '"', error="e" * limits.MAX_ERROR_CHARS,
        checkpoint='"' + "c" * (limits.MAX_CHECKPOINT_BYTES - 2) + '"',
        idempotency_key="i" * 255, request_hash="h" * 64,
    )
    size = len(codec.encode(state))
    assert size <= limits.worst_case_state_bytes() <= limits.MAX_RECORD_BYTES // 2, size
