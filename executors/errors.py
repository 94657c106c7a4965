"""Outcomes a handler signals by raising, and errors of the executor itself.

- ``PermanentError``: the handler knows retrying cannot help (bad payload, a
  resource that is gone). The executor reports ``TaskFailed(permanent=True)``
  and the processor fails the task without further attempts.
- Any other exception fails only the attempt; the processor retries it per
  the task's policy.
- ``AttemptAbandoned``: raised *to* a handler by ``ctx.checkpoint`` when the
  executor has given up on its attempt (cancelled, timed out, shutdown grace
  over) or the attempt has already returned; nothing was written.
- ``HandlerImportError``: a module named with ``--handlers`` could not be
  imported; raised at start-up, before the executor joins its group.
"""

from __future__ import annotations


class PermanentError(Exception):
    """Raise from a handler to fail the task without retries."""


class AttemptAbandoned(Exception):
    """The executor no longer reports this attempt; a checkpoint of it was not written."""


class HandlerImportError(ImportError):
    """A handler module named on the command line could not be imported."""

    def __init__(self, module: str, cause: BaseException) -> None:
        super().__init__(f"could not import handler module {module!r}: {type(cause).__name__}: {cause}", name=module)
        self.module = module
