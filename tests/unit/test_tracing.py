"""``schemas.tracing`` and the processor's spans (docs/tracing.md), without a broker.

Off (no OTLP endpoint) must cost nothing: no SDK module imported, no span
built, and a ready message still carries the context its task came with.
On, the processor's step records a ``queue`` span per ready message (under
the task's context, or under the ``dependency`` span of the step that made
it ready) and sends that span's context in the ready message's headers.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import pytest

from taskstream.schemas import DependencyResolved, TaskCreated, Topics, codec
from taskstream.schemas.tracing import (
    MAX_ATTEMPTS,
    OFF,
    TRACEPARENT,
    TRACESTATE,
    TraceContext,
    attempt_outcome,
    enabled_by,
    max_attempts_of,
    trace_id_of,
    tracing_from_environ,
)
from taskstream.streams.processor import fold_step

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TOPICS = Topics("unit")
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


@pytest.mark.parametrize(("header", "state", "expected"), [
    (PARENT, None, TraceContext(PARENT)),
    (PARENT, "a=1,b=2", TraceContext(PARENT, "a=1,b=2")),
    (f" {PARENT} ", "  ", TraceContext(PARENT)),
    (PARENT.encode(), b"a=1", TraceContext(PARENT, "a=1")),
    (f"01-{TRACE}-00f067aa0ba902b7-01-more", None, TraceContext(PARENT)),  # a later version: its 4 fields
    (f"00-{TRACE}-00f067aa0ba902b7-01-more", None, None),  # version 00 has nothing after the flags
    (f"ff-{TRACE}-00f067aa0ba902b7-01", None, None),
    (f"00-{'0' * 32}-00f067aa0ba902b7-01", None, None),
    (f"00-{TRACE}-{'0' * 16}-01", None, None),
    (PARENT.upper(), None, None),
    ("00-abc-def-01", None, None),
    ("", "a=1", None),
    (None, None, None),
    (PARENT, "x" * 513, TraceContext(PARENT)),  # an oversized tracestate is dropped, the traceparent kept
])
def test_a_received_traceparent_is_kept_only_when_it_is_valid_w3c(header, state, expected):
    assert TraceContext.parse(header, state) == expected


def test_headers_carry_a_context_both_ways_and_the_trace_id_is_its_second_field():
    ctx = TraceContext(PARENT, "a=1")
    assert ctx.headers() == [(TRACEPARENT, PARENT.encode()), (TRACESTATE, b"a=1")]
    assert TraceContext.from_headers([("event_type", b"ReadyTask"), *ctx.headers()]) == ctx
    assert TraceContext.from_headers(None) is None and TraceContext.from_headers([("event_type", b"x")]) is None
    assert ctx.trace_id == trace_id_of(PARENT) == TRACE and trace_id_of(None) is None
    assert max_attempts_of([(MAX_ATTEMPTS, b"3")]) == 3 and max_attempts_of([(MAX_ATTEMPTS, b"x")]) is None


@pytest.mark.parametrize(("failed", "permanent", "attempt", "budget", "outcome"), [
    (False, False, 1, 1, "succeeded"),
    (True, False, 1, 3, "retry"),
    (True, False, 3, 3, "failed"),
    (True, True, 1, 3, "failed"),
    (True, False, 1, None, "retry"),  # no budget known: the decider decides, the span says it may retry
])
def test_an_attempt_outcome(failed, permanent, attempt, budget, outcome):
    assert attempt_outcome(failed, permanent, attempt, budget) == outcome


@pytest.mark.parametrize(("environ", "on"), [
    ({}, False),
    ({"OTEL_SERVICE_NAME": "x"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
])
def test_tracing_is_on_only_with_an_otlp_endpoint(environ, on):
    assert enabled_by(environ) is on


def test_without_an_endpoint_no_sdk_is_imported_and_no_tracer_is_created():
    # A fresh interpreter: the three components' modules loaded, their tracing built as their entry points do.
    code = (
        "import sys\n"
        "import taskstream.api.app, taskstream.streams.processor, taskstream.executors.runtime\n"
        "from taskstream.schemas.tracing import OFF, tracing_from_environ\n"
        "made = [tracing_from_environ(c, {'OTEL_SERVICE_NAME': 'x'}) for c in ('api', 'processor', 'executor')]\n"
        "assert all(t is OFF and not t.enabled for t in made), made\n"
        "assert OFF.start('submit', None, {}) is None\n"
        # FastAPI imports the OpenTelemetry API when it is installed; the SDK and the exporter stay unloaded.
        "loaded = sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter')))\n"
        "assert not loaded, loaded\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_with_an_endpoint_each_component_gets_a_tracer_with_its_service_name(monkeypatch):
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    tracing = tracing_from_environ("processor", environ)
    try:
        assert tracing.enabled
        assert tracing._provider.resource.attributes["service.name"] == "taskstream-processor"
    finally:
        tracing.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "billing-workers")  # the SDK reads the standard variables itself
    tracing = tracing_from_environ("executor", environ)
    try:
        assert tracing._provider.resource.attributes["service.name"] == "billing-workers"
    finally:
        tracing.shutdown()


@pytest.fixture
def recorded():
    """A tracing that keeps its spans in memory: (tracing, exporter)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from taskstream.schemas.tracing import _Traced

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield _Traced(provider), exporter
    provider.shutdown()


def _fold(events, tracing=OFF):
    """Fold ``events`` (one task's) through the processor's step; (state, ready outputs of the last event)."""
    state, ready = None, []
    for offset, event in enumerate(events):
        step = fold_step(TOPICS, state, codec.encode(event), offset, 0, T0, "proc", dependents=lambda: [],
                         tracing=tracing)
        state = step.state or state
        ready = [o for o in step.outputs if o.topic.startswith(f"{TOPICS.prefix}.ready.")]
    return state, ready


def created(**kw) -> TaskCreated:
    return TaskCreated(task_id="t", occurred_at=T0, producer="api", handler="echo", max_attempts=3, **kw)


def test_off_a_ready_message_carries_the_tasks_own_context_and_an_untraced_task_none():
    state, (ready,) = _fold([created(traceparent=PARENT, tracestate="a=1")])
    assert state.traceparent == PARENT and state.tracestate == "a=1"
    assert TraceContext.from_headers(ready.headers) == TraceContext(PARENT, "a=1")
    assert max_attempts_of(ready.headers) == 3
    _, (plain,) = _fold([created()])
    assert [name for name, _ in plain.headers] == [codec.EVENT_TYPE_HEADER]


def test_on_a_queue_span_under_the_tasks_context_goes_in_the_ready_headers(recorded):
    tracing, exporter = recorded
    _, (ready,) = _fold([created(traceparent=PARENT)], tracing)
    (queue,) = exporter.get_finished_spans()
    assert queue.name == "queue" and f"{queue.context.trace_id:032x}" == TRACE
    assert f"{queue.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert dict(queue.attributes) == {
        "taskstream.task_id": "t", "taskstream.handler": "echo", "taskstream.attempt": 1,
        "taskstream.priority": "medium", "messaging.system": "kafka", "messaging.destination.name": ready.topic}
    assert TraceContext.from_headers(ready.headers).traceparent == f"00-{TRACE}-{queue.context.span_id:016x}-01"


def test_on_a_resolved_dependency_is_a_span_and_the_queueing_it_causes_is_under_it(recorded):
    tracing, exporter = recorded
    waiting = created(traceparent=PARENT, depends_on=["up"])
    resolved = DependencyResolved(task_id="t", occurred_at=T0, producer="proc", upstream="up", outcome="succeeded")
    state, (ready,) = _fold([waiting, resolved], tracing)
    assert state.status == "queued"
    hop, queue = exporter.get_finished_spans()
    assert (hop.name, queue.name) == ("dependency", "queue")
    assert f"{hop.parent.span_id:016x}" == "00f067aa0ba902b7" and queue.parent.span_id == hop.context.span_id
    assert hop.attributes["taskstream.upstream_task_id"] == "up"
    assert hop.attributes["taskstream.upstream_outcome"] == "succeeded"


def test_on_a_task_without_a_context_gets_no_span(recorded):
    tracing, exporter = recorded
    _, (ready,) = _fold([created()], tracing)
    assert TraceContext.from_headers(ready.headers) is None and exporter.get_finished_spans() == ()
