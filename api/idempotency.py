"""``Idempotency-Key``: deterministic ids and a request fingerprint, kept in the log.

A request with ``Idempotency-Key: K`` gets ids derived from K instead of
random ones: ``uuid5(NAMESPACE, K)`` for ``POST /tasks``, ``K:<i>`` for the
i-th entry of ``/tasks:batch``, ``K:<key>`` for a workflow entry and
``K:workflow`` for the workflow id. Keys are scoped to the principal: an
authenticated caller's names are prefixed with its id (``derived_id``), so
two principals using the same key get different tasks and neither learns
of the other's use; anonymous callers share one scope. Every ``TaskCreated`` of the request
carries the key and ``request_hash``, the SHA-256 of the request's canonical
JSON (the validated body with defaults filled in, keys sorted, plus the
route), so ``<p>.state`` and with it the read model know both.

Before writing, the route looks the derived ids up in the read model:

- none exists: a fresh request, written as usual;
- all exist with the same hash: a repeat; answered like the first time
  (202, same ids), nothing written;
- some exist with the same hash: a repeat of a request that was cut short
  (a produce failed half-way); the missing tasks are written now, so a
  client that retries completes it;
- one exists with another hash: 422 naming ``Idempotency-Key``.

This survives an API restart since the read model is rebuilt from
``<p>.state``. The window: a repeat that arrives at another API process
before the first request's states reached that process's read model
(normally milliseconds) writes a second ``TaskCreated`` with the same id;
the processor ignores a ``TaskCreated`` for a task that exists, so the task
still runs once. Within one API process there is no window: the API puts a
task into its own read model as soon as the broker acknowledged it.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import orjson

from taskstream.schemas import ValidationError

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:taskstream:idempotency-key")


def key_of(request) -> str | None:
    """The request's ``Idempotency-Key`` header, checked (``check_key``)."""
    return check_key(request.headers.get(HEADER))


def check_key(key: str | None) -> str | None:
    """The header value if it is a usable key; ``ValidationError`` naming the header otherwise."""
    if key is None:
        return None
    if not key.strip() or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise ValidationError(HEADER, f"must be 1 to {MAX_KEY_LENGTH} printable characters")
    return key


def derived_id(name: str, scope: str | None = None) -> str:
    """A task, workflow or schedule id derived from ``name`` in the key scope of the principal ``scope``
    (32 hex characters, like ``new_id()``).

    ``scope`` is the authenticated principal's id (the events' ``actor``);
    None, for anonymous callers, is one scope of its own, whose ids are those
    of before keys had scopes. Keys are printable, so the line break that
    separates a scope from the key never makes two scopes' names equal.
    """
    return uuid.uuid5(NAMESPACE, name if scope is None else f"principal:{scope}\n{name}").hex


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys and no whitespace (orjson; ``codec`` has no sort-keys variant)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def request_hash(route: str, body: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of ``{"route": route, "body": body}``."""
    return hashlib.sha256(canonical_json({"route": route, "body": body})).hexdigest()


def conflict(key: str) -> ValidationError:
    return ValidationError(HEADER, f"{key!r} was already used for a different request")
