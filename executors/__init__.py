"""The executor runtime and the handler SDK (DESIGN §7, §9).

Executors consume ``<p>.ready.*``, run the handler named in each ReadyTask
and report the outcome to ``<p>.events``. Handler authors need only::

    from taskstream.executors import handler, TaskContext, PermanentError

    @handler("images.resize")
    async def resize(payload: dict, ctx: TaskContext) -> dict:   # sync def works too
        ...
        return {"ok": True}

``ctx.upstream`` maps each dependency's id (and, in a workflow, its key) to
its result; results above 64 KiB of JSON are not carried and show as None.
``ctx.cancelled`` turns true when the task is cancelled while running (async
handlers are also cancelled; sync ones should poll it).
Raising ``PermanentError`` fails the task for good; any other exception fails
the attempt (retried per policy). The runtime is in ``runtime``, built-ins
(``noop``, ``sleep``, ``echo``) in ``builtin``.
"""

from .builtin import BUILTINS
from .context import TaskContext
from .errors import HandlerImportError, PermanentError
from .registry import Handler, Registry, default_registry, handler, load_handler_modules
from .runtime import Executor, run_executor

__all__ = [
    "BUILTINS",
    "Executor",
    "Handler",
    "HandlerImportError",
    "PermanentError",
    "Registry",
    "TaskContext",
    "default_registry",
    "handler",
    "load_handler_modules",
    "run_executor",
]
