"""The executor runtime and the handler SDK (DESIGN §7, §9).

Executors consume ``<p>.ready.*``, run the handler named in each ReadyTask
and report the outcome to ``<p>.events``. Handler authors need only::

    from taskstream.executors import handler, TaskContext, PermanentError

    @handler("images.resize")
    async def resize(payload: dict, ctx: TaskContext) -> dict:   # sync def works too
        ...
        return {"ok": True}

``ctx.upstream`` maps each dependency to its result, by its workflow key
for a task of a workflow, else by its task id (each dependency once);
results above 64 KiB of JSON are not carried and show as None.
``ctx.cancelled`` turns true when the task is cancelled while running, its
timeout expires or the executor's shutdown grace period is over (async
handlers are also cancelled; sync ones should poll it).
``await ctx.checkpoint(data)`` (in a sync handler: ``ctx.checkpoint(data)``,
which blocks until written) saves JSON progress of at most 256 KiB; a later
attempt finds the last one in ``ctx.last_checkpoint`` (None if there is
none). On an attempt the executor gave up on it raises ``AttemptAbandoned``.

Time limits: an attempt runs at most its task's ``timeout_s`` or, when the
task sets none, ``settings.default_timeout_s`` (None: no limit). On timeout an
async handler is cancelled; a sync handler cannot be killed, so it is
abandoned: its thread runs on, whatever it returns later is ignored, and the
attempt is reported failed (``TimeoutError: ...``, retried per policy). While
an attempt runs longer than ``settings.started_event_after_s`` the executor
heartbeats it every ``settings.heartbeat_interval_s`` so the processor does
not expire its lease; handlers need not do anything for that, however long
they run.

Raising ``PermanentError`` fails the task for good; ``Retry(delay_s=30)``
fails the attempt and asks for the next one in 30 s (at most the policy's
``max_s``; the attempt still counts against ``max_attempts``); any other
exception fails the attempt (retried per policy). The runtime is in ``runtime``, built-ins
(``noop``, ``sleep``, ``echo``) in ``builtin``, the guarded ``http`` and
``shell`` built-ins in ``builtin_http`` and ``builtin_shell``.
"""

from .builtin import BUILTINS
from .context import TaskContext
from .errors import AttemptAbandoned, HandlerImportError, PermanentError, Retry
from .registry import Handler, HandlerFunction, Registry, default_registry, handler, load_handler_modules
from .runtime import Executor, run_executor

__all__ = [
    "AttemptAbandoned",
    "BUILTINS",
    "Executor",
    "Handler",
    "HandlerFunction",
    "HandlerImportError",
    "PermanentError",
    "Registry",
    "Retry",
    "TaskContext",
    "default_registry",
    "handler",
    "load_handler_modules",
    "run_executor",
]
