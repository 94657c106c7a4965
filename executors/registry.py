"""Handlers by name: what ``@handler("name")`` fills and the executor looks up.

A handler is a plain function ``(payload, ctx) -> result``, ``async def`` or
``def`` (sync ones run in the executor's thread pool). ``@handler`` registers
into the module-level ``default_registry`` unless given another ``Registry``
(tests build their own). It returns the function itself, marked with its
name (``taskstream_handler``), so the function is also a typed reference to
the handler: ``client.submit(send_email, payload)`` sends ``"send_email"``'s
registered name, and a misspelt reference fails as a ``NameError`` (or in
the type checker) before any task is sent. The built-ins (``taskstream.executors.builtin``) live
in a registry of their own that every executor consults after its own, so they
are always there and a user handler of the same name wins.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, cast

from .errors import HandlerImportError

log = logging.getLogger(__name__)

HandlerFn = Callable[[Any, Any], Any]


class HandlerFunction(Protocol):
    """What ``@handler`` returns: the function it registered, carrying the name it was registered under.

    ``taskstream.client``'s ``submit`` (and ``task_body``) take it in place of the name.
    """

    taskstream_handler: str

    def __call__(self, payload: Any, ctx: Any, /) -> Any: ...


@dataclass(frozen=True, slots=True)
class Handler:
    name: str
    fn: HandlerFn
    is_async: bool


def _is_async(fn: Callable) -> bool:
    # not a callability test (fn is callable): an object whose __call__ is async
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004


def _origin(fn: Callable) -> tuple[str | None, str | None]:
    return getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)


class Registry:
    """A name → handler table."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, name: str, fn: HandlerFn) -> HandlerFunction:
        """Register ``fn`` under ``name``; return ``fn`` itself, marked with ``name`` (``taskstream_handler``).

        Registering a second, different function under a taken name raises
        ``ValueError``; re-registering the same function (same module and
        qualified name, as when a module is imported twice) replaces it. A
        function registered under two names is marked with the last; an
        object that takes no attributes is registered but not marked (it
        cannot stand for its name in ``submit``).
        """
        if not isinstance(name, str) or not name:
            raise ValueError("a handler name must be a non-empty string")
        if not callable(fn):
            raise TypeError(f"handler {name!r} must be callable, got {type(fn).__name__}")
        existing = self._handlers.get(name)
        if existing is not None and _origin(existing.fn) != _origin(fn):
            raise ValueError(
                f"handler {name!r} is already registered by {existing.fn.__module__}.{existing.fn.__qualname__}"
            )
        self._handlers[name] = Handler(name, fn, _is_async(fn))
        try:
            fn.taskstream_handler = name  # type: ignore[attr-defined]
        except (AttributeError, TypeError):
            log.debug("handler %s: %r takes no attributes; it is registered but cannot stand for its name", name, fn)
        return cast(HandlerFunction, fn)

    def handler(self, name: str) -> Callable[[HandlerFn], HandlerFunction]:
        """Decorator form of ``register``."""
        return lambda fn: self.register(name, fn)

    def get(self, name: str) -> Handler | None:
        return self._handlers.get(name)

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def __iter__(self) -> Iterator[Handler]:
        return iter(list(self._handlers.values()))

    def __len__(self) -> int:
        return len(self._handlers)


#: Where ``@handler`` registers unless told otherwise; what ``taskstream executor`` runs.
default_registry = Registry()


def handler(name: str, *, registry: Registry | None = None) -> Callable[[HandlerFn], HandlerFunction]:
    """Register the decorated sync or async function as the handler called ``name``; the function stays itself
    and stands for the handler in ``client.submit(resize, payload)`` (``HandlerFunction``).

    >>> @handler("images.resize")
    ... async def resize(payload, ctx): ...
    """
    return (registry if registry is not None else default_registry).handler(name)


def load_handler_modules(names: Iterable[str]) -> list[str]:
    """Import handler modules by dotted name (their ``@handler`` calls register them).

    The current directory goes on ``sys.path`` first: console scripts such as
    ``taskstream executor --handlers myapp.tasks`` do not put it there, yet
    that is where users expect ``myapp`` to be found. Raises
    ``HandlerImportError`` naming the module when one fails to import.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    loaded = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # ImportError, or anything the module raises at import
            raise HandlerImportError(name, exc) from exc
        log.info("loaded handler module %s", name)
        loaded.append(name)
    return loaded
