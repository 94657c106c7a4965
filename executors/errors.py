"""Outcomes a handler signals by raising, and errors of the executor itself.

- ``PermanentError``: the handler knows retrying cannot help (bad payload, a
  resource that is gone). The executor reports ``TaskFailed(permanent=True)``
  and the processor fails the task without further attempts.
- Any other exception fails only the attempt; the processor retries it per
  the task's policy.
- ``HandlerImportError``: a module named with ``--handlers`` could not be
  imported; raised at start-up, before the executor joins its group.
"""

from __future__ import annotations


class PermanentError(Exception):
    """Raise from a handler to fail the task without retries."""


class HandlerImportError(ImportError):
    """A handler module named on the command line could not be imported."""

    def __init__(self, module: str, cause: BaseException) -> None:
        super().__init__(f"could not import handler module {module!r}: {type(cause).__name__}: {cause}", name=module)
        self.module = module
