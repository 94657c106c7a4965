"""Outcomes a handler signals by raising, and errors of the executor itself.

- ``PermanentError``: the handler knows retrying cannot help (bad payload, a
  resource that is gone). The executor reports ``TaskFailed(permanent=True)``
  and the processor fails the task without further attempts.
- ``Retry(delay_s=...)``: fail this attempt and ask for the next one after
  ``delay_s`` seconds instead of the policy's backoff. The executor reports
  ``TaskFailed(retry_delay_s=...)``; the processor keeps the wait within the
  task's policy (``RetryPolicy.clamp``: at most ``max_s``) and the attempt
  still counts against ``max_attempts``.
- Any other exception fails only the attempt; the processor retries it per
  the task's policy.
- ``AttemptAbandoned``: raised *to* a handler by ``ctx.checkpoint`` when the
  executor has given up on its attempt (cancelled, timed out, shutdown grace
  over) or the attempt has already returned; nothing was written.
- ``HandlerImportError``: a module named with ``--handlers`` could not be
  imported; raised at start-up, before the executor joins its group.
"""

from __future__ import annotations

import math


class PermanentError(Exception):
    """Raise from a handler to fail the task without retries."""


class Retry(Exception):
    """Raise from a handler to fail this attempt and have the next one start after ``delay_s`` seconds.

    Like temporalio's ``ApplicationError(next_retry_delay=...)`` and dramatiq's
    ``Retry(delay=...)``: for a handler that knows when trying again makes sense
    (a rate limit's ``Retry-After``, a resource that is back at a known time).
    The wait the processor schedules is ``min(delay_s, max_s)`` of the task's
    retry policy, without jitter; the attempt counts against ``max_attempts``
    like any failure, so after the last attempt the task fails for good whatever
    was asked. ``delay_s=None`` (the default) is a plain failure: the policy's
    backoff. ``delay_s`` must be a finite number of at least 0 (ValueError).
    """

    def __init__(self, message: str = "", *, delay_s: float | None = None) -> None:
        if delay_s is not None:
            if isinstance(delay_s, bool) or not isinstance(delay_s, (int, float)) or not math.isfinite(delay_s) \
                    or delay_s < 0:
                raise ValueError(f"Retry: delay_s must be a finite number of seconds, at least 0, not {delay_s!r}")
            delay_s = float(delay_s)
        super().__init__(message or ("retry requested" if delay_s is None else f"retry requested in {delay_s:g} s"))
        self.delay_s = delay_s


class AttemptAbandoned(Exception):
    """The executor no longer reports this attempt; a checkpoint of it was not written."""


class HandlerImportError(ImportError):
    """A handler module named on the command line could not be imported."""

    def __init__(self, module: str, cause: BaseException) -> None:
        super().__init__(f"could not import handler module {module!r}: {type(cause).__name__}: {cause}", name=module)
        self.module = module
