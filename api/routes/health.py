"""``/healthz`` (liveness) and ``/readyz`` (readiness), at the root.

``/readyz`` answers ``api.readiness.check`` (what ready means is told
there; the gRPC health service asks the same function): 200 with each
check's verdict in ``checks``, or 503, a problem document with the reasons
joined in ``detail``, one by one in ``reasons`` and each check's verdict in
``checks`` (and, when it was measured, the read model's lag in
``read_model_lag``).
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from .. import readiness
from ..context import Context
from ..problems import JSONResponse, problem

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> Response:
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(ctx: Context) -> Response:
    ready = await readiness.check(ctx)
    if ready.reasons:
        return problem(503, "Not ready", "; ".join(ready.reasons), kind="not-ready", checks=ready.checks,
                       reasons=ready.reasons, **ready.measured)
    return JSONResponse({"status": "ready", "checks": ready.checks, **ready.measured})
