"""What a handler gets besides its payload: ``TaskContext``.

One context per attempt. The idempotency key (``task_id:attempt``) is the
same each time the same attempt is redelivered (execution is at-least-once),
so handlers with outside effects can deduplicate on it. ``cancelled`` turns
true when the executor gives up on the attempt (its timeout expired or the
shutdown grace period ran out); long sync handlers should check it and
return early, since a thread cannot be killed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True, eq=False)
class TaskContext:
    task_id: str
    attempt: int
    handler: str
    priority: str
    last_checkpoint: Any = None
    _cancelled: bool = field(default=False, repr=False)

    @property
    def idempotency_key(self) -> str:
        return f"{self.task_id}:{self.attempt}"

    @property
    def cancelled(self) -> bool:
        """True once the executor is shutting this attempt down."""
        return self._cancelled

    def _cancel(self) -> None:
        self._cancelled = True
