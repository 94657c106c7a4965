"""What a handler gets besides its payload: ``TaskContext``.

One context per attempt. The idempotency key (``task_id:attempt``) is the
same each time the same attempt is redelivered (execution is at-least-once),
so handlers with outside effects can deduplicate on it. ``cancelled`` turns
true when the executor gives up on the attempt: a client cancelled the task
(``DELETE /api/v1/tasks/{id}``), its timeout expired or the shutdown grace
period ran out. Async handlers are also cancelled (``CancelledError`` at
their next ``await``); long sync handlers should check ``ctx.cancelled`` and
return early, since a thread cannot be killed. Whatever a cancelled attempt
returns or raises is not reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True, eq=False)
class TaskContext:
    """The attempt a handler runs, and what it may know about it.

    ``upstream`` holds the results of the task's dependencies, decoded from
    JSON: each dependency id maps to its result and, for a task submitted in
    a workflow, so does each dependency's workflow key (both keys map to the
    same value). A task without dependencies gets ``{}``. Results above
    64 KiB of JSON are not carried; ctx.upstream holds None for them (the
    handler can fetch such a result with ``GET /api/v1/tasks/{id}``). A
    dependency whose result was ``null`` also shows as ``None``.
    """

    task_id: str
    attempt: int
    handler: str
    priority: str
    last_checkpoint: Any = None
    upstream: dict[str, Any] = field(default_factory=dict)
    _cancelled: bool = field(default=False, repr=False)

    @property
    def idempotency_key(self) -> str:
        return f"{self.task_id}:{self.attempt}"

    @property
    def cancelled(self) -> bool:
        """True once the executor is shutting this attempt down (task cancelled, timeout, shutdown)."""
        return self._cancelled

    def _cancel(self) -> None:
        self._cancelled = True
