"""Size limits of everything that enters a task: checked where the data enters, relied on everywhere else.

A task's state (``TaskState``) is one record of ``<p>.state``; it must fit in
one Kafka record whatever clients send and handlers return. So every part of
it is bounded where it enters: the API refuses a request over a limit (413 or
422 naming the field), the executor turns a handler's oversized result or
checkpoint into a failed attempt (and cuts a long error text), and the fold
(``streams.domain``) bounds what it accumulates itself (dependents, upstream
results). ``worst_case_state_bytes`` adds them up; a unit test keeps it under
half of ``MAX_RECORD_BYTES``, the record size every producer and topic of
ours is configured for.

Sizes of JSON documents are bytes of their compact UTF-8 JSON text.
"""

from __future__ import annotations

#: Largest record taskstream writes (producer ``message.max.bytes``, topic ``max.message.bytes``).
MAX_RECORD_BYTES = 4 * 1024 * 1024

#: A task's payload (request JSON) and a handler's result, each.
MAX_PAYLOAD_BYTES = 256 * 1024
MAX_RESULT_BYTES = 256 * 1024
#: One checkpoint a handler saves (``ctx.checkpoint``).
MAX_CHECKPOINT_BYTES = 256 * 1024
#: An error text (handler exception, cancel reason): longer ones are cut, with a note of the full size.
MAX_ERROR_CHARS = 4096
#: One upstream's result carried to its dependent in ``DependencyResolved`` (larger: carried as null).
MAX_UPSTREAM_RESULT_BYTES = 64 * 1024
#: All upstream results a task holds together; a result that would pass it is carried as null.
MAX_UPSTREAM_RESULTS_BYTES = 256 * 1024
#: Dependents one task records; a further registration is answered at once as ``rejected``.
MAX_DEPENDENTS = 5000
#: Dependencies of one task, and tasks in one batch or workflow.
MAX_DEPENDENCIES = 1000
MAX_TASKS_PER_REQUEST = 1000
#: A task id (also a dependency id), a workflow key, a handler name.
MAX_ID_CHARS = 64
MAX_HANDLER_CHARS = 200
#: A task's name; its labels (count, key and value length; keys match ``LABEL_KEY_PATTERN``).
MAX_NAME_CHARS = 256
MAX_LABELS = 32
MAX_LABEL_KEY_CHARS = 63
MAX_LABEL_VALUE_CHARS = 256
LABEL_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]*$"
#: Nesting of a JSON document (payload, result, checkpoint).
MAX_JSON_DEPTH = 64
#: Integers in JSON documents: what fits in 64 bits (signed or unsigned), as orjson and most JSON readers take them.
MIN_JSON_INT = -(2**63)
MAX_JSON_INT = 2**64 - 1


def cut_error(text: str) -> str:
    """``text`` if it is at most ``MAX_ERROR_CHARS`` long, else its start and a note of its full length."""
    if len(text) <= MAX_ERROR_CHARS:
        return text
    note = f"... [cut: {len(text):,} characters > {MAX_ERROR_CHARS:,}]"
    return text[: MAX_ERROR_CHARS - len(note)] + note


def worst_case_state_bytes() -> int:
    """An upper bound of a TaskState's JSON-ish content at every limit (the Avro record is smaller)."""
    ids = MAX_ID_CHARS + 8  # an id with Avro framing
    return (
        MAX_PAYLOAD_BYTES + MAX_RESULT_BYTES + MAX_CHECKPOINT_BYTES + 4 * MAX_ERROR_CHARS
        + MAX_UPSTREAM_RESULTS_BYTES + MAX_DEPENDENTS * ids
        + MAX_DEPENDENCIES * (4 * ids + 32)  # depends_on, resolved, upstream_results keys, upstream_keys
        + MAX_LABELS * (MAX_LABEL_KEY_CHARS + MAX_LABEL_VALUE_CHARS + 16)
        + MAX_NAME_CHARS * 4 + MAX_HANDLER_CHARS * 4 + 4096
    )
