"""Built-in handlers, always available to every executor: ``noop``, ``sleep``, ``echo``, ``http``, ``shell``.

``noop``, ``sleep`` and ``echo`` exist for demos, smoke tests and benchmarks;
they live in the ``BUILTINS`` registry. ``http`` (``builtin_http``) and
``shell`` (``builtin_shell``) need the executor's settings (allow-lists,
caps), so each executor builds its own table with ``builtins(settings)``.
The executor consults that table after its own registry, so a user handler
of the same name takes precedence.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from taskstream.schemas import Settings

from .context import TaskContext
from .errors import PermanentError
from .registry import Registry

BUILTINS = Registry()


@BUILTINS.handler("noop")
async def noop(payload: Any, ctx: TaskContext) -> None:
    """Do nothing; the cheapest possible task (benchmarks)."""
    return None


@BUILTINS.handler("sleep")
async def sleep(payload: Any, ctx: TaskContext) -> dict:
    """Sleep ``payload["seconds"]`` seconds without blocking the executor."""
    if not isinstance(payload, dict) or "seconds" not in payload:
        raise PermanentError("sleep: payload must be an object with a 'seconds' field")
    seconds = payload["seconds"]
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        raise PermanentError("sleep: 'seconds' must be a non-negative number")  # no payload value in errors
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@BUILTINS.handler("echo")
async def echo(payload: Any, ctx: TaskContext) -> Any:
    """Return the payload as the result."""
    return payload


def builtins(settings: Settings) -> Registry:
    """``BUILTINS`` plus the ``http`` and ``shell`` handlers bound to ``settings``."""
    from .builtin_http import HttpHandler
    from .builtin_shell import ShellHandler

    table = Registry()
    for h in BUILTINS:
        table.register(h.name, h.fn)
    table.register("http", HttpHandler(settings))
    table.register("shell", ShellHandler(settings))
    return table
