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

Checkpoints: ``ctx.checkpoint(data)`` saves progress as JSON; the executor
appends ``TaskCheckpointed`` to the log before the attempt's result, and a
later attempt of the task (after a failure, timeout, lease expiry or a
shutdown) gets the last saved value in ``ctx.last_checkpoint``. The context
does not talk to Kafka itself: the runtime gives it a ``_checkpointer``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

# re-exported: the largest checkpoint, in bytes of JSON (UTF-8), next to the context that saves it
from taskstream.schemas.limits import MAX_CHECKPOINT_BYTES as MAX_CHECKPOINT_BYTES


@dataclass(slots=True, eq=False)
class TaskContext:
    """The attempt a handler runs, and what it may know about it.

    ``upstream`` holds the results of the task's dependencies, decoded from
    JSON, each under one name: its workflow key for a task submitted in a
    workflow, else its task id (``streams.domain.upstream_json`` holds the
    rule). A task without dependencies gets ``{}``. Results above
    64 KiB of JSON, and those past 256 KiB of upstream results in all, are
    not carried; ctx.upstream holds None for them (the handler can fetch
    such a result with ``GET /api/v1/tasks/{id}``). A dependency whose
    result was ``null`` also shows as ``None``.

    ``last_checkpoint`` is the value most recently passed to ``checkpoint``
    by an earlier attempt of this task (decoded from JSON), or None when
    there is none. A handler that resumes from it should treat it as a hint:
    an earlier attempt may have done more work after its last checkpoint.

    ``checkpoint(data)`` saves ``data`` for later attempts:

    - ``data`` must be JSON-serialisable (else ``TypeError``, naming the
      type) and at most 256 KiB of JSON (else ``ValueError``).
    - From an ``async def`` handler it returns an awaitable; ``await
      ctx.checkpoint(data)`` returns once the broker has acknowledged the
      record (it raises ``BrokerUnavailable`` if it could not be written).
      The record is sent at the call, not at the await, and the attempt's
      result is reported only after it, so even an un-awaited checkpoint is
      in the log before the result.
    - From a plain ``def`` handler (which runs in the executor's thread
      pool), or any thread other than the executor's event loop, it blocks
      until the broker has acknowledged the record and returns None.
    - On an attempt the executor has given up on (``cancelled`` is true:
      task cancelled, timed out, shutdown grace over) or that has already
      returned, it raises ``AttemptAbandoned`` and writes nothing: the
      attempt's work no longer counts, and a sync handler abandoned after a
      timeout learns that it should stop.
    - Each call is one event on the processor's hot path: checkpoint at
      milestones (every few seconds at most), not in a tight loop.
    """

    task_id: str
    attempt: int
    handler: str
    priority: str
    last_checkpoint: Any = None
    upstream: dict[str, Any] = field(default_factory=dict)
    _cancelled: bool = field(default=False, repr=False)
    _checkpointer: Callable[[Any], Awaitable[None] | None] | None = field(default=None, repr=False)

    @property
    def idempotency_key(self) -> str:
        return f"{self.task_id}:{self.attempt}"

    @property
    def cancelled(self) -> bool:
        """True once the executor is shutting this attempt down (task cancelled, timeout, shutdown)."""
        return self._cancelled

    def checkpoint(self, data: Any) -> Awaitable[None] | None:
        """Save ``data`` (JSON, ≤ 256 KiB) for later attempts; see the class docstring."""
        if self._checkpointer is None:
            raise RuntimeError("this TaskContext is not attached to an executor; checkpoints need one")
        return self._checkpointer(data)

    def _cancel(self) -> None:
        self._cancelled = True
