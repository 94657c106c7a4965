"""``/healthz`` (liveness) and ``/readyz`` (readiness), at the root.

Ready means: the broker answers a metadata request, every topic of
``catalogue(settings)`` exists, and the read model finished its initial
catch-up of ``<p>.state`` (a lower bound on the embedded broker, see
``read_model.ReadModel``). With ``ready_requires_workers`` (set by
`taskstream dev`) the processor and executor consumer groups must also be
stable, so a client that waits for readiness finds the whole system warm.
Otherwise 503 with the reason in ``detail``.
"""

from __future__ import annotations

import asyncio

from confluent_kafka import KafkaException
from fastapi import APIRouter, Request
from starlette.responses import Response

from taskstream.schemas import Topics, catalogue

from ..problems import JSONResponse, problem

router = APIRouter(tags=["health"])

METADATA_TIMEOUT_S = 2.0


@router.get("/healthz")
async def healthz() -> Response:
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    state = request.app.state
    checks = {"broker": "ok", "topics": "ok", "read_model": "ok"}
    reasons = []
    try:
        existing = await asyncio.to_thread(_topic_names, state.admin)
    except KafkaException as exc:
        checks["broker"] = checks["topics"] = "unknown"
        reasons.append(f"broker unreachable at {state.settings.bootstrap_servers}: {exc}")
    else:
        missing = [t.name for t in catalogue(state.settings) if t.name not in existing]
        if missing:
            checks["topics"] = "missing"
            reasons.append(f"topics missing: {', '.join(missing)}")
    if state.settings.ready_requires_workers and checks["broker"] == "ok":
        topics = Topics(state.settings.prefix)
        groups = await asyncio.to_thread(_group_states, state.admin, [topics.processor_group, topics.executor_group])
        for name, group in (("processor", topics.processor_group), ("executors", topics.executor_group)):
            checks[name] = groups.get(group, "unknown")
            if checks[name] != "stable":
                reasons.append(f"consumer group {group} is {checks[name]}")
    if not state.read_model.caught_up:
        checks["read_model"] = "catching up"
        reasons.append(f"read model not caught up: {state.read_model.problem or 'catching up'}")
    if reasons:
        return problem(503, "Not ready", "; ".join(reasons), kind="not-ready", checks=checks)
    return JSONResponse({"status": "ready", "checks": checks})


def _group_states(admin, groups: list[str]) -> dict[str, str]:
    out = {}
    for group, fut in admin.describe_consumer_groups(groups, request_timeout=METADATA_TIMEOUT_S).items():
        try:
            out[group] = fut.result(METADATA_TIMEOUT_S).state.name.lower()
        except KafkaException:
            out[group] = "unknown"
    return out


def _topic_names(admin) -> set[str]:
    topics = admin.list_topics(timeout=METADATA_TIMEOUT_S).topics
    return {name for name, meta in topics.items() if meta.error is None and meta.partitions}
