"""``GET /api/v1/limits``: the live view of every concurrency key, from the gates the read model keeps.

The body is ``api/limits.py``'s (gRPC ``ListLimits`` answers with the same);
docs/http-api.md, "Limits".
"""

from __future__ import annotations

from fastapi import APIRouter, Query
from starlette.responses import Response

from ..context import Context
from ..limits import gate_json, limits_body
from ..problems import JSONResponse
from ..reads import DEFAULT_LIMIT, MAX_LIMIT

router = APIRouter(prefix="/api/v1", tags=["limits"])

__all__ = ["gate_json", "router"]


@router.get("/limits")
async def list_limits(
    ctx: Context,
    key: str | None = Query(None, description="only this concurrency key"),
    active: bool = Query(False, description="only keys with a task holding a slot or waiting"),
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
    cursor: str | None = None,
) -> Response:
    """Every concurrency key with its limit, rate, holders and waiting tasks, in key order; cursor pagination
    as ``GET /tasks``; ``totals`` over every key; ``handlers``: every handler's limit and rate as set (its
    tasks' key is ``handler:<name>``)."""
    return JSONResponse(limits_body(ctx, key=key, active=active, limit=limit, cursor=cursor))
