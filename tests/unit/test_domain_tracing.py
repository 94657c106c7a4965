"""A task's trace context in the decider (docs/tracing.md): carried, never read.

``SubmitTask.traceparent``/``tracestate`` go into ``TaskCreated`` as given and
from there into the state, which every later event keeps; a fold of the log
(the rebuild) gives the processor's live states, context included; the codec
keeps both fields both ways.
"""

from __future__ import annotations

from dataclasses import replace

from taskstream.schemas import TaskCreated, TaskState, codec
from taskstream.streams import domain
from taskstream.streams.domain import SubmitTask, decide
from taskstream.streams.rebuild import compare

from .test_rebuild import T0, created, fold, simulate

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_submit_carries_the_context_into_task_created_as_given():
    command = SubmitTask(task_id="t", handler="echo", producer="api", traceparent=PARENT, tracestate="a=1")
    [event] = decide(None, command, T0)
    assert isinstance(event, TaskCreated) and (event.traceparent, event.tracestate) == (PARENT, "a=1")
    [plain] = decide(None, replace(command, traceparent=None, tracestate=None), T0)
    assert (plain.traceparent, plain.tracestate) == (None, None)


def test_the_created_state_has_the_context_and_the_codec_keeps_it():
    event = created("t", traceparent=PARENT, tracestate="a=1")
    state = domain.fold([event])
    assert (state.traceparent, state.tracestate) == (PARENT, "a=1")
    assert codec.decode(codec.encode(event)) == event
    assert codec.decode(codec.encode(state)) == state


def test_every_step_of_a_life_keeps_the_context_and_the_rebuild_equals_the_live_states():
    # a fails once and is retried; b waits for a; c never runs; d has no context at all
    traced = {"traceparent": PARENT, "tracestate": "a=1"}
    log, table = simulate([created("a", max_attempts=3, backoff_initial_s=0.5, backoff_jitter=0.0, **traced),
                           created("b", 1, depends_on=["a"], **traced), created("c", 2, **traced), created("d", 3)],
                          fail_first={"a"}, never_run={"c"})
    assert {k: (s.status, s.attempt) for k, s in table.items()} == {
        b"a": ("succeeded", 2), b"b": ("succeeded", 1), b"c": ("queued", 1), b"d": ("succeeded", 1)}
    assert {k: (s.traceparent, s.tracestate) for k, s in table.items()} == {
        b"a": (PARENT, "a=1"), b"b": (PARENT, "a=1"), b"c": (PARENT, "a=1"), b"d": (None, None)}
    f = fold(log)
    rebuilt = {k: f.result(k) for k in f.states}
    assert compare(table, rebuilt) == []
    assert all(isinstance(s, TaskState) and s.traceparent == table[k].traceparent for k, s in rebuilt.items())
