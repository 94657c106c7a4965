"""The live view of every concurrency key (``GET /api/v1/limits``, gRPC ``ListLimits``), from the read model.

A key's gate (``GateState``, folded by the processor that owns the key and
published on ``<p>.state`` like a task's or schedule's state) holds who has a
slot, who waits and the starts its rate spent; ``limits_body`` shows every
gate as the API's read model last saw it, with every handler's limit and
rate as set (docs/http-api.md, "Limits"). HTTP and gRPC answer with it.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any

from taskstream.schemas import GateState, ValidationError
from taskstream.streams import domain

from . import service
from .context import ApiContext
from .models import rfc3339
from .reads import encode_cursor

#: Holders and waiting tasks a key's entry names (the first of each; the counts are exact).
SHOWN_TASKS = 100


def gate_json(g: GateState, now: datetime) -> dict:
    """A key's entry: its limits, how many hold a slot (queued or running) and wait, its rate used at ``now``
    (starts in the last ``per_s``), what holds the waiting back (``limit``, ``rate`` or null) and when the rate
    lets the next one start."""
    holding, waiting = len(g.holders), len(g.waiting)
    used = len(domain.live_spent(g, now)) if g.rate is not None else None
    blocked_by = None
    if waiting:
        blocked_by = "limit" if g.limit and holding >= g.limit else "rate" if g.rate is not None else None
    return {
        "key": g.gate_id.removeprefix(domain.GATE_PREFIX),
        "gate_id": g.gate_id,
        "limit": g.limit or None,
        "rate": g.rate,
        "per_s": g.per_s,
        "holding": holding,
        "waiting": waiting,
        "rate_used": used,
        "blocked_by": blocked_by,
        "next_start_at": rfc3339(domain.wakes_at(g)) if blocked_by == "rate" else None,
        "holders": [{"task_id": t, "attempt": a} for t, a in sorted(g.holders.items())[:SHOWN_TASKS]],
        "waiting_tasks": g.waiting[:SHOWN_TASKS],
        "granted": g.granted,
        "updated_at": rfc3339(g.updated_at),
    }


def _after(cursor: str) -> bytes:
    """The gate id a ``next_cursor`` continues after; ``ValidationError`` naming ``cursor`` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if not raw.startswith(domain.GATE_PREFIX.encode()):
        raise ValidationError("cursor", "not a cursor returned by this API")
    return raw



def limits_body(ctx: ApiContext, *, key: str | None, active: bool, limit: int, cursor: str | None) -> dict[str, Any]:
    """Every concurrency key with its limit, rate, holders and waiting tasks, in key order (``limit`` a page,
    ``cursor`` the previous page's ``next_cursor``); ``totals`` over every key; ``handlers``: every handler's
    limit and rate as set (its tasks' key is ``handler:<name>``)."""
    gates = ctx.read_model.store.gates
    now = datetime.now(UTC)
    gate_count, holding, waiting = gates.totals()
    totals = {"keys": gate_count, "holding": holding, "waiting": waiting}
    handlers = service.handler_limits(ctx)
    if key is not None:
        g = gates.get(domain.gate_id(key))
        return {"limits": [] if g is None else [gate_json(g, now)], "next_cursor": None, "totals": totals,
                "handlers": handlers}
    out: list[dict] = []
    after = _after(cursor) if cursor else None
    while True:  # ``active`` skips idle keys: read on until the page is full or the keys end
        page, last = gates.list(limit=limit, after=after)
        out += [gate_json(g, now) for g in page if not active or g.holders or g.waiting]
        if len(out) >= limit or last is None:
            break
        after = last
    more = len(out) > limit or last is not None
    return {"limits": out[:limit],
            "next_cursor": encode_cursor(out[limit - 1]["gate_id"].encode()) if more and out else None,
            "totals": totals, "handlers": handlers}
