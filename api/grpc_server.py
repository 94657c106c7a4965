"""The gRPC server of the API process: taskstream.v1 services, health and reflection, on ``grpc_port``.

``start(ctx)`` runs a ``grpc.aio`` server in the API's own event loop (the
app lifespan calls it with the app's ``ApiContext`` when
``settings.grpc_port`` is set, and ``stop`` on shutdown), so gRPC calls
reach the same producer, read model and change feed as HTTP. The services
are in ``api/grpc_services.py``; this module wires them with:

- ``grpc.health.v1.Health``: SERVING for ``""`` and every taskstream.v1
  service while ``/readyz`` answers 200 (the same checks,
  ``api.readiness``: broker, topics, read model), NOT_SERVING otherwise;
  re-evaluated every ``HEALTH_INTERVAL_S``.
- Server reflection, so ``grpcurl`` and other tools list and call the
  services without the ``.proto`` files.
- ``interceptors(ctx)``: a hook for cross-cutting concerns of every call
  (tracing, access logs); empty today. Authentication, authorization and
  rate limits are per call, in ``grpc_services`` (``_Adapter.admit``), which
  knows the HTTP route each RPC mirrors.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from taskstream.grpc.v1 import (
    flow_pb2,
    flow_pb2_grpc,
    schedules_pb2,
    schedules_pb2_grpc,
    tasks_pb2,
    tasks_pb2_grpc,
    workers_pb2,
    workers_pb2_grpc,
    workflows_pb2,
    workflows_pb2_grpc,
)

from . import auth, readiness
from .context import ApiContext
from .grpc_services import FlowService, ScheduleService, TaskService, WorkerService, WorkflowService
from .hosts import loopback

log = logging.getLogger(__name__)

#: Seconds between two evaluations of readiness for the health service.
HEALTH_INTERVAL_S = 2.0
#: Seconds in-flight calls get to finish when the API stops (watches end at once: the feed closes first).
STOP_GRACE_S = 2.0

SERVICES = (
    tasks_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name,
    workflows_pb2.DESCRIPTOR.services_by_name["WorkflowService"].full_name,
    schedules_pb2.DESCRIPTOR.services_by_name["ScheduleService"].full_name,
    workers_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,
    flow_pb2.DESCRIPTOR.services_by_name["FlowService"].full_name,
)


def interceptors(ctx: ApiContext) -> list[grpc.aio.ServerInterceptor]:
    """Interceptors of every call (none yet); authentication is per call in ``grpc_services``."""
    return []


class GrpcServer:
    """A running ``grpc.aio`` server and its health loop."""

    def __init__(self, server: grpc.aio.Server, port: int, health: health.aio.HealthServicer,
                 task: asyncio.Task) -> None:
        self.server = server
        self.port = port
        self.health = health
        self._health_task = task

    async def stop(self, grace: float = STOP_GRACE_S) -> None:
        self._health_task.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start(ctx: ApiContext) -> GrpcServer:
    """Serve taskstream.v1, health and reflection on ``grpc_host:grpc_port`` (0: a free port) in this loop."""
    settings = ctx.settings
    if not auth.auth_enabled(settings) and not loopback(settings.grpc_host) and not settings.auth_allow_unauthenticated:
        raise auth.InsecureConfig(  # as auth.check_exposure for HTTP
            f"refusing to serve gRPC on {settings.grpc_host} without authentication: turn on API keys or JWT, "
            "listen on 127.0.0.1, or set TASKSTREAM_AUTH_ALLOW_UNAUTHENTICATED=true "
            "if something in front authenticates")
    server = grpc.aio.server(interceptors=interceptors(ctx), options=[
        ("grpc.keepalive_time_ms", 30_000),  # pings keep idle watch streams open through proxies
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ])
    _add_tasks(TaskService(ctx), server)
    workflows_pb2_grpc.add_WorkflowServiceServicer_to_server(WorkflowService(ctx), server)
    schedules_pb2_grpc.add_ScheduleServiceServicer_to_server(ScheduleService(ctx), server)
    workers_pb2_grpc.add_WorkerServiceServicer_to_server(WorkerService(ctx), server)
    flow_pb2_grpc.add_FlowServiceServicer_to_server(FlowService(ctx), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    port = server.add_insecure_port(address)
    if not port:
        raise RuntimeError(f"gRPC: cannot listen on {address}")
    await server.start()
    await _set_health(health_servicer, await _ready(ctx))
    task = asyncio.create_task(_health_loop(ctx, health_servicer), name="grpc-health")
    log.info("gRPC API listening on %s:%d", settings.grpc_host, port)
    return GrpcServer(server, port, health_servicer, task)


class _Handlers:
    """Stands in for a server to catch the method handlers a generated ``add_…_to_server`` registers."""

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, name: str, handlers: dict[str, Any]) -> None:
        self.name, self.handlers = name, handlers


def _passthrough(serialize: Any) -> Any:
    return lambda message: message if isinstance(message, bytes) else serialize(message)


def _add_tasks(servicer: TaskService, server: grpc.aio.Server) -> None:
    """``add_TaskServiceServicer_to_server``, except that the watches may send ready-made bytes.

    A change goes to every stream that watches it: its ``TaskChange`` is
    serialized from a cached ``Task`` (``grpc_services.change_bytes``) rather
    than copied and serialized once per stream.
    """
    caught = _Handlers()
    tasks_pb2_grpc.add_TaskServiceServicer_to_server(servicer, caught)
    handlers = {name: h._replace(response_serializer=_passthrough(h.response_serializer))
                if name in ("WatchTask", "WatchTasks") else h for name, h in caught.handlers.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(caught.name, handlers),))
    server.add_registered_method_handlers(caught.name, handlers)


async def _ready(ctx: ApiContext) -> bool:
    """Whether ``/readyz`` would answer 200 now (the same checks; broker answers are cached for a second)."""
    try:
        return (await readiness.check(ctx)).ready
    except Exception as exc:  # a check that fails in an unexpected way: not ready, and say why
        log.warning("gRPC health: readiness check failed: %s", exc)
        return False


async def _set_health(servicer: health.aio.HealthServicer, ready: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *SERVICES):
        await servicer.set(name, status)


async def _health_loop(ctx: ApiContext, servicer: health.aio.HealthServicer) -> None:
    was = None
    while True:
        await asyncio.sleep(HEALTH_INTERVAL_S)
        ready = await _ready(ctx)
        if ready != was:
            log.info("gRPC health: %s", "SERVING" if ready else "NOT_SERVING")
            was = ready
        await _set_health(servicer, ready)
