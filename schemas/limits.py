"""Size limits of everything that enters a task: checked where the data enters, relied on everywhere else.

A task's state (``TaskState``) is one record of ``<p>.state``; it must fit in
one Kafka record whatever clients send and handlers return. So every part of
it is bounded where it enters: the API refuses a request over a limit (413 or
422 naming the field), the executor turns a handler's oversized result or
checkpoint into a failed attempt (and cuts a long error text and traceback), and the fold
(``streams.domain``) bounds what it accumulates itself (upstream results;
dependents are records of their own). ``worst_case_state_bytes`` adds them up; a unit test keeps it under
half of ``MAX_RECORD_BYTES``, the record size every producer and topic of
ours is configured for.

Sizes of JSON documents are bytes of their compact UTF-8 JSON text.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

#: Largest record taskstream writes (producer ``message.max.bytes``, topic ``max.message.bytes``).
MAX_RECORD_BYTES = 4 * 1024 * 1024

#: A task's payload (request JSON) and a handler's result, each.
MAX_PAYLOAD_BYTES = 256 * 1024
MAX_RESULT_BYTES = 256 * 1024
#: One checkpoint a handler saves (``ctx.checkpoint``).
MAX_CHECKPOINT_BYTES = 256 * 1024
#: An error text (handler exception, cancel reason): longer ones are cut, with a note of the full size.
MAX_ERROR_CHARS = 4096
#: A failed attempt's traceback (``TaskFailed.traceback``): the handler's innermost frames, at most
#: ``MAX_TRACEBACK_FRAMES`` of them and ``MAX_TRACEBACK_CHARS`` characters (a longer text keeps its end).
MAX_TRACEBACK_FRAMES = 30
MAX_TRACEBACK_CHARS = 8 * 1024
#: The exception type a failed attempt names (``TaskFailed.error_type``, ``module.QualName``).
MAX_ERROR_TYPE_CHARS = 256
#: One upstream's result carried to its dependent in ``DependencyResolved`` (larger: carried as null).
MAX_UPSTREAM_RESULT_BYTES = 64 * 1024
#: All upstream results a task holds together; a result that would pass it is carried as null.
MAX_UPSTREAM_RESULTS_BYTES = 256 * 1024
#: Dependents a state record written before dependents became edges may embed (``TaskState.dependents``, no
#: longer grown); a task's dependents have no bound: each is a record of its own (streams/domain/dependents.py).
LEGACY_MAX_DEPENDENTS = 1000
#: A task's ``timeout_s`` (an attempt running longer is failed).
MAX_TIMEOUT_S = 30 * 24 * 3600.0
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
#: Date-times a client gives (``run_at``, ``as_of``, ``start_at``, ``end_at``): far enough from
#: ``datetime.min``/``max`` that no offset, backoff or cron step taken from them can overflow.
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9000, 1, 1, tzinfo=UTC)


class JsonLimitError(ValueError):
    """A value that is not a JSON document within the limits; ``path`` is where (``.a[3].b``, ``""`` the root)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path or '(root)'}: {reason}")
        self.path = path
        self.reason = reason


#: A ``check_json`` stack entry: (value, depth, the entry of its container, its key or index there).
_Entry = tuple[Any, int, "_Entry | None", str | int | None]

#: Longest concurrency key of a task, in characters, after its ``{payload.<field>}`` template is filled in.
MAX_CONCURRENCY_KEY_CHARS = 256
#: Highest ``limit`` of a concurrency key.
MAX_CONCURRENCY_LIMIT = 10_000
#: Highest ``rate`` of a concurrency key (starts per period): its gate keeps the time of each start of a period.
MAX_RATE = 1_000
#: Longest period of a key's rate, in seconds (a day).
MAX_RATE_PERIOD_S = 86_400.0

def check_json(value: Any) -> None:
    """Raise ``JsonLimitError`` unless ``value`` is a JSON document that every reader takes the same way.

    That is: dicts with string keys, lists, strings that encode to UTF-8 (no
    lone surrogates), integers in ``[MIN_JSON_INT, MAX_JSON_INT]``, finite
    floats, booleans and None, nested at most ``MAX_JSON_DEPTH`` containers
    deep. Iterative, so any depth is checked without recursion; the path is
    built only for the error.
    """
    stack: list[_Entry] = [(value, 1, None, None)]
    while stack:
        entry = stack.pop()
        v, depth = entry[0], entry[1]
        if isinstance(v, str):
            if not _is_utf8(v):
                raise JsonLimitError(_path(entry), "not valid Unicode text (a lone surrogate such as \\ud800)")
        elif v is None or isinstance(v, bool):
            continue
        elif isinstance(v, int):
            if not MIN_JSON_INT <= v <= MAX_JSON_INT:
                raise JsonLimitError(_path(entry), f"integer out of range: JSON integers must be within "
                                                   f"[-2**63, 2**64-1] ({MIN_JSON_INT}..{MAX_JSON_INT})")
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise JsonLimitError(_path(entry), "not a finite number (NaN, Infinity or beyond ±1.8e308)")
        elif isinstance(v, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise JsonLimitError(_path(entry), f"nested deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(v, list):
                stack.extend((x, depth + 1, entry, i) for i, x in enumerate(v))
                continue
            for k, x in v.items():
                if not isinstance(k, str):
                    raise JsonLimitError(_path(entry), f"a key is not a string ({type(k).__name__})")
                if not _is_utf8(k):
                    raise JsonLimitError(_path(entry),
                                         "a key is not valid Unicode text (a lone surrogate such as \\ud800)")
                stack.append((x, depth + 1, entry, k))
        else:
            raise JsonLimitError(_path(entry), f"not a JSON value ({type(v).__name__})")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _path(entry: _Entry) -> str:
    """``.a[3].b`` of a ``check_json`` stack entry; long keys cut so an error message stays short."""
    parts: list[str] = []
    while entry[2] is not None:
        key = entry[3]
        assert key is not None  # only the outermost value has no key, and it has no container either
        parts.append(f"[{key}]" if isinstance(key, int) else "." + (key if len(key) <= 64 else key[:61] + "..."))
        entry = entry[2]
    return "".join(reversed(parts))


def cut_error(text: str) -> str:
    """``text`` if it is at most ``MAX_ERROR_CHARS`` long, else its start and a note of its full length."""
    if len(text) <= MAX_ERROR_CHARS:
        return text
    note = f"... [cut: {len(text):,} characters > {MAX_ERROR_CHARS:,}]"
    return text[: MAX_ERROR_CHARS - len(note)] + note


def cut_traceback(text: str) -> str:
    """``text`` if it is at most ``MAX_TRACEBACK_CHARS`` long, else a note of its full length and its end.

    The end is kept: a traceback's innermost frames and the exception line are what a reader needs.
    """
    if len(text) <= MAX_TRACEBACK_CHARS:
        return text
    note = f"[cut: {len(text):,} characters > {MAX_TRACEBACK_CHARS:,}; the innermost frames kept] ...\n"
    tail = text[len(text) - (MAX_TRACEBACK_CHARS - len(note)):]
    if "\n" in tail[:-1]:
        tail = tail[tail.index("\n") + 1:]  # from a line's start
    return note + tail


def cut_error_type(text: str) -> str:
    """``text`` cut to ``MAX_ERROR_TYPE_CHARS`` (a class's qualified name has no bound of its own)."""
    return text if len(text) <= MAX_ERROR_TYPE_CHARS else text[: MAX_ERROR_TYPE_CHARS - 3] + "..."


def worst_case_state_bytes() -> int:
    """An upper bound of a TaskState's JSON-ish content at every limit (the Avro record is smaller)."""
    ids = MAX_ID_CHARS + 8  # an id with Avro framing
    return (
        MAX_PAYLOAD_BYTES + MAX_RESULT_BYTES + MAX_CHECKPOINT_BYTES + 4 * MAX_ERROR_CHARS
        + 4 * (MAX_TRACEBACK_CHARS + MAX_ERROR_TYPE_CHARS)
        + MAX_UPSTREAM_RESULTS_BYTES + LEGACY_MAX_DEPENDENTS * ids
        + MAX_DEPENDENCIES * (4 * ids + 64)  # depends_on, resolved, upstream_results keys, upstream_keys
        + MAX_LABELS * (MAX_LABEL_KEY_CHARS + MAX_LABEL_VALUE_CHARS + 16)
        + MAX_NAME_CHARS * 4 + MAX_HANDLER_CHARS * 4 + 4096
        + 2 * (MAX_CONCURRENCY_KEY_CHARS + 16) * 4  # concurrency_key and waiting_for
    )
