"""``GET /api/v1/workers``: every executor that reports itself, what it serves, holds and runs (``api.workers``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter, Query
from starlette.responses import Response

from ..context import Context
from ..problems import JSONResponse
from ..workers import workers_body

router = APIRouter(prefix="/api/v1", tags=["operations"])


@router.get("/workers")
async def list_workers(ctx: Context, status: Literal["alive", "gone"] | None = Query(None)) -> Response:
    """Executors from their latest report to ``<p>.workers``: ``alive`` while they report, ``gone`` after three
    report intervals without one, no longer listed an hour after their last report or at once after a clean stop."""
    return JSONResponse(workers_body(ctx.workers, datetime.now(UTC), status))
