"""The API's application context: the typed parts every request handler reaches, over HTTP and gRPC alike.

``app.create_app`` builds the parts, each in one place (``app.construct_context``, in the app's lifespan: the
producer, read model, history reader and broker probe connect to the cluster), and hands the one ``ApiContext``
to the HTTP routes (the FastAPI dependency ``Context``), to the gRPC servicers (their constructor) and to
``api.service`` and ``api.reads``, the API's write and read paths. ``app.state`` holds this context and
nothing else of the API's (the dashboard keeps its throughput history there too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from taskstream.schemas.tracing import OFF, Tracing

if TYPE_CHECKING:  # the parts' modules import this one (their routes take a ``Context``)
    from taskstream.schemas import Settings, codec
    from taskstream.schemas.kafka import AsyncProducer

    from .auth import Authenticator, RateLimit
    from .history import HistoryReader, ReadLimits
    from .metrics import ApiMetrics
    from .probe import BrokerProbe
    from .read_model import ReadModel
    from .workers import WorkerDirectory


@dataclass(frozen=True, slots=True)
class ApiContext:
    """One running API process: its settings and the parts built from them, for the process's lifetime.

    - ``settings``: the settings the app was created with; ``wire`` the record format they select.
    - ``producer_id`` and ``producer``: who writes the API's events (the ``producer`` field) and the
      acks=all, idempotent producer that writes them to ``<p>.events``.
    - ``read_model``: the projection of ``<p>.state`` (tasks, schedules, change feed) reads answer from.
    - ``history`` and ``read_limits``: the bounded partition scans of history reads, and the bounds of
      every expensive read (``GET /tasks`` scan budget included).
    - ``probe``: the cached read-only questions to the broker (readiness, stats, cluster, metrics).
    - ``authenticator`` and ``rate_limit``: who calls, and their token buckets (the HTTP middleware holds the
      same two).
    - ``metrics``: the app's Prometheus registry.
    - ``workers``: every executor's latest report, folded from ``<p>.workers`` (``api.workers``).
    - ``tracing``: the spans of submits (``schemas.tracing``; ``OFF`` unless an OTLP endpoint is configured).
    """

    settings: Settings
    wire: codec.WireFormat
    producer_id: str
    producer: AsyncProducer
    read_model: ReadModel
    history: HistoryReader
    read_limits: ReadLimits
    probe: BrokerProbe
    authenticator: Authenticator
    rate_limit: RateLimit
    metrics: ApiMetrics
    workers: WorkerDirectory
    tracing: Tracing = OFF


async def api_context(request: Request) -> ApiContext:
    """FastAPI dependency: the context of the app serving ``request`` (put there by its lifespan). A coroutine,
    so FastAPI calls it on the loop: a plain ``def`` dependency costs every request a hop to a worker thread."""
    return request.app.state.context


#: A route parameter typed ``Context`` receives the app's ``ApiContext``.
Context = Annotated[ApiContext, Depends(api_context)]

__all__ = ["ApiContext", "Context", "api_context"]
