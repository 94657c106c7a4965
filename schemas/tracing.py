"""OpenTelemetry traces of a task's life: the one module that knows about spans (docs/tracing.md).

A task carries a W3C trace context (``TraceContext``: ``traceparent`` and
``tracestate``) from its submit to its last attempt: the API takes it from
the request (HTTP headers, gRPC metadata) and opens a ``submit`` span under
it, or a new trace when none came; the task's ``TaskCreated`` and its state
keep the submit span's context (the decider only carries the strings); the
processor opens a ``queue`` span under it each time it publishes a ready
message and a ``dependency`` span each time it resolves a dependency of the
task, and sends the ``queue`` span's context to the executor in the ready
message's ``traceparent``/``tracestate`` headers; the executor opens one
``attempt`` span under that. Each process exports its spans with the
OpenTelemetry SDK over OTLP/HTTP.

``tracing_from_environ(component, environ)`` is called once per process by
its entry point: with neither ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` nor
``OTEL_EXPORTER_OTLP_ENDPOINT`` set (or ``OTEL_SDK_DISABLED=true``, or
``OTEL_TRACES_EXPORTER=none``) it answers ``OFF``, which builds nothing and
never imports the SDK; the callers test ``tracing.enabled`` before building
attributes. The SDK itself reads every other standard ``OTEL_*`` variable
(headers, sampler, batch processor, resource attributes); the service name is
``taskstream-<component>`` unless ``OTEL_SERVICE_NAME`` (or a ``service.name``
resource attribute) names another. The SDK is the ``otel`` extra
(``pip install 'taskstream[otel]'``). Why this shape: docs/decisions/0030-opentelemetry.md.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

#: Kafka header names of a ready message's trace context (W3C Trace Context names, as HTTP and gRPC carry them).
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
#: Ready-message header beside ``traceparent``: the task's attempt budget, so an ``attempt`` span can tell a failure
#: that will be retried (``retry``) from the last one (``failed``).
MAX_ATTEMPTS = "taskstream-max-attempts"
#: The longest ``tracestate`` kept (W3C: at most 32 members, 512 characters is what vendors must propagate).
MAX_TRACESTATE_CHARS = 512

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")

#: Attempt outcomes, the ``taskstream.outcome`` attribute of an ``attempt`` span.
SUCCEEDED, FAILED, RETRY, CANCELLED = "succeeded", "failed", "retry", "cancelled"

AttributeValue = str | bool | int | float


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A W3C trace context: ``traceparent`` (``00-<trace id>-<parent span id>-<flags>``) and ``tracestate``."""

    traceparent: str
    tracestate: str | None = None

    @property
    def trace_id(self) -> str:
        return self.traceparent[3:35]

    @classmethod
    def parse(cls, traceparent: str | bytes | None, tracestate: str | bytes | None = None) -> TraceContext | None:
        """The context of a received ``traceparent`` (and ``tracestate``); None when absent or not valid W3C.

        Version ``ff``, an all-zero trace or span id and a version-00 header with anything after the flags are
        invalid (the W3C rules); a later version's extra fields are dropped. A ``tracestate`` over
        ``MAX_TRACESTATE_CHARS`` is dropped, the ``traceparent`` kept.
        """
        if isinstance(traceparent, bytes):
            traceparent = traceparent.decode("ascii", "replace")
        if not traceparent:
            return None
        m = _TRACEPARENT.match(traceparent.strip())
        if m is None:
            return None
        version, trace_id, span_id, flags, rest = m.groups()
        if version == "ff" or (version == "00" and rest) or trace_id == "0" * 32 or span_id == "0" * 16:
            return None
        if isinstance(tracestate, bytes):
            tracestate = tracestate.decode("ascii", "replace")
        state = tracestate.strip() if tracestate else None
        if state is not None and (not state or len(state) > MAX_TRACESTATE_CHARS):
            state = None
        return cls(f"00-{trace_id}-{span_id}-{flags}", state)

    @classmethod
    def of(cls, traceparent: str | None, tracestate: str | None = None) -> TraceContext | None:
        """The context a task keeps (fields already checked when written), or None without one."""
        return cls(traceparent, tracestate) if traceparent else None

    @classmethod
    def from_headers(cls, headers: Sequence[tuple[str, bytes | None]] | None) -> TraceContext | None:
        """The context in Kafka ``headers`` (a ready message's), or None."""
        if not headers:
            return None
        parent = state = None
        for name, value in headers:
            if name == TRACEPARENT:
                parent = value
            elif name == TRACESTATE:
                state = value
        return cls.parse(parent, state)

    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers carrying this context."""
        out = [(TRACEPARENT, self.traceparent.encode())]
        if self.tracestate:
            out.append((TRACESTATE, self.tracestate.encode()))
        return out


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id (32 hex digits) of a task's ``traceparent``; None without one."""
    return traceparent[3:35] if traceparent else None


def max_attempts_of(headers: Sequence[tuple[str, bytes | None]] | None) -> int | None:
    """The ``MAX_ATTEMPTS`` header of a ready message, or None."""
    for name, value in headers or ():
        if name == MAX_ATTEMPTS and value:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def attempt_outcome(failed: bool, permanent: bool, attempt: int, max_attempts: int | None) -> str:
    """``succeeded``, ``retry`` (a failure with attempts left, as far as the executor knows) or ``failed``."""
    if not failed:
        return SUCCEEDED
    if permanent or (max_attempts is not None and attempt >= max_attempts):
        return FAILED
    return RETRY


class Span:
    """A span that was started and is not ended yet; ``context`` is what its children name as their parent."""

    __slots__ = ("_span", "context")

    def __init__(self, span: Any, context: TraceContext) -> None:
        self._span = span
        self.context = context

    def end(self, attributes: Mapping[str, AttributeValue] | None = None, error: str | None = None) -> None:
        """End it with ``attributes`` added; ``error`` (an exception type) marks it failed (status ERROR)."""
        from opentelemetry.trace import Status, StatusCode

        if attributes:
            self._span.set_attributes(dict(attributes))
        if error is not None:
            self._span.set_attribute("error.type", error)
            self._span.set_status(Status(StatusCode.ERROR))
        self._span.end()


class Tracing:
    """Tracing switched off (``OFF``): ``enabled`` is False and nothing is built.

    ``start`` answers None and ``span`` yields its parent unchanged, so a caller that carries the context
    still carries what it was given; callers test ``enabled`` first where even that would cost.
    """

    enabled = False

    def start(self, name: str, parent: TraceContext | None, attributes: Mapping[str, AttributeValue],
              *, kind: str = "internal") -> Span | None:
        """Start span ``name`` under ``parent`` (a new trace when None); None when off."""
        return None

    def record(self, name: str, parent: TraceContext, attributes: Mapping[str, AttributeValue],
               *, kind: str = "internal") -> TraceContext:
        """A span of no duration under ``parent`` (the processor's steps); its context, ``parent`` when off."""
        return parent

    @contextlib.contextmanager
    def span(self, name: str, parent: TraceContext | None, attributes: Mapping[str, AttributeValue],
             *, kind: str = "internal") -> Iterator[TraceContext | None]:
        """Span ``name`` around a block: yields the context its children name (``parent`` when off); an exception
        out of the block marks it failed."""
        started = self.start(name, parent, attributes, kind=kind)
        if started is None:
            yield parent
            return
        try:
            yield started.context
        except BaseException as exc:
            started.end(error=type(exc).__name__)
            raise
        started.end()

    def shutdown(self) -> None:
        """Export what is buffered and stop (once, at the process's end)."""


OFF = Tracing()


class _Traced(Tracing):
    """Tracing with the OpenTelemetry SDK: a tracer provider of this process's own, exporting over OTLP/HTTP."""

    enabled = True

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider = provider
        self._tracer = provider.get_tracer("taskstream")
        self._propagator = TraceContextTextMapPropagator()
        self._kinds = {"internal": trace.SpanKind.INTERNAL, "server": trace.SpanKind.SERVER,
                       "producer": trace.SpanKind.PRODUCER, "consumer": trace.SpanKind.CONSUMER}

    def _parent(self, parent: TraceContext | None) -> Any:
        if parent is None:
            from opentelemetry.context import Context

            return Context()  # a new trace, whatever span is current in this thread
        carrier = {TRACEPARENT: parent.traceparent}
        if parent.tracestate:
            carrier[TRACESTATE] = parent.tracestate
        return self._propagator.extract(carrier)

    def start(self, name: str, parent: TraceContext | None, attributes: Mapping[str, AttributeValue],
              *, kind: str = "internal") -> Span | None:
        span = self._tracer.start_span(name, context=self._parent(parent), kind=self._kinds[kind],
                                       attributes=dict(attributes))
        sc = span.get_span_context()
        state = sc.trace_state.to_header() if sc.trace_state else None
        return Span(span, TraceContext(f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}",
                                       state or None))

    def record(self, name: str, parent: TraceContext, attributes: Mapping[str, AttributeValue],
               *, kind: str = "internal") -> TraceContext:
        started = self.start(name, parent, attributes, kind=kind)
        assert started is not None
        started.end()
        return started.context

    def shutdown(self) -> None:
        self._provider.shutdown()


def enabled_by(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` turns tracing on: an OTLP endpoint is set and the SDK is not disabled."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def tracing_from_environ(component: str, environ: Mapping[str, str]) -> Tracing:
    """The tracing of a ``component`` process (``api``, ``processor``, ``executor``): ``OFF`` unless ``environ``
    names an OTLP endpoint (``enabled_by``); else an SDK tracer provider of its own (never the global one, so
    components sharing a process keep their service names) with a batch span processor and the OTLP/HTTP exporter.

    Raises ``RuntimeError`` when tracing is asked for and the ``otel`` extra is not installed.
    """
    if not enabled_by(environ):
        return OFF
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise RuntimeError("OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry SDK is not installed: "
                           "pip install 'taskstream[otel]'") from exc
    resource = Resource.create({})
    named = str(resource.attributes.get(SERVICE_NAME, ""))
    if not named or named.startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: f"taskstream-{component}"}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    log.info("tracing on: %s exports spans over OTLP/HTTP as %s", component, resource.attributes.get(SERVICE_NAME))
    return _Traced(provider)


__all__ = ["CANCELLED", "FAILED", "MAX_ATTEMPTS", "OFF", "RETRY", "SUCCEEDED", "TRACEPARENT", "TRACESTATE",
           "AttributeValue", "Span", "TraceContext", "Tracing", "attempt_outcome", "enabled_by", "max_attempts_of",
           "trace_id_of", "tracing_from_environ"]
