"""What every process shares for logs and metrics: the task fields of a log line, the JSON log format, the metrics port.

Each component defines its own metrics on its own ``CollectorRegistry``
(``api/metrics.py``, ``streams/metrics.py``, ``executors/metrics.py``; never
the global registry, so two components in one test process never share a
counter). The API serves its registry at ``/metrics`` on its HTTP port; a
processor or executor process serves its registry with ``serve_metrics`` on
``settings.metrics_host:settings.metrics_port`` (0 turns it off).

A log line about a task carries ``task_id`` and ``attempt`` as record
attributes (``extra=about(task_id, attempt)``) besides the text of the
message, so the JSON format (``settings.log_format == "json"``) gives them as
fields a log pipeline can filter on. Payloads, results and checkpoint data
are never put into log lines: they may hold the users' secrets.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from types import TracebackType
from typing import IO, Any

from prometheus_client import CollectorRegistry, start_http_server

from .settings import Settings

log = logging.getLogger(__name__)

#: Record attributes a log line about a task carries (``about``), copied into JSON lines when present.
TASK_FIELDS = ("task_id", "attempt")
#: Longest message and traceback a log line carries (a traceback keeps its end: the frames that raised).
MAX_LOG_MESSAGE_CHARS = 4096
MAX_LOG_TRACEBACK_CHARS = 8192


def _cut(text: str, limit: int, keep_end: bool = False) -> str:
    if len(text) <= limit:
        return text
    note = f"[... {len(text) - limit:,} characters cut ...]"
    return note + text[-limit:] if keep_end else text[:limit] + note


def about(task_id: str, attempt: int | None = None) -> dict[str, Any]:
    """``extra=`` of a log call about a task (attempt when the line is about one attempt)."""
    return {"task_id": task_id} if attempt is None else {"task_id": task_id, "attempt": attempt}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (RFC 3339, UTC, ms), level, logger, message, task_id/attempt, exc_info.

    The message is formatted lazily as usual (``record.getMessage()``), so
    the ``%`` arguments are only rendered for records that are emitted.
    """

    def format(self, record: logging.LogRecord) -> str:
        at = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        out: dict[str, Any] = {
            "time": at.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": _cut(record.getMessage(), MAX_LOG_MESSAGE_CHARS),
        }
        for name in TASK_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc_info"] = _cut(self.formatException(record.exc_info), MAX_LOG_TRACEBACK_CHARS, keep_end=True)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT`` with the message and traceback cut like the JSON lines'."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _cut(record.message, MAX_LOG_MESSAGE_CHARS)
        return super().formatMessage(record)

    def formatException(
        self, ei: tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]
    ) -> str:
        return _cut(super().formatException(ei), MAX_LOG_TRACEBACK_CHARS, keep_end=True)


def log_handler(settings: Settings, stream: IO[str]) -> logging.Handler:
    """A handler writing to ``stream`` in ``settings.log_format``."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter(TEXT_FORMAT))
    return handler


def serve_metrics(registry: CollectorRegistry, settings: Settings, component: str) -> tuple[str, int] | None:
    """Serve ``registry`` at ``http://metrics_host:metrics_port/metrics`` from a daemon thread.

    Returns the address, or None when the port is 0 (off) or cannot be bound
    (logged as an error: the component runs on without metrics rather than
    not at all).
    """
    if settings.metrics_port == 0:
        return None
    try:
        start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=registry)
    except OSError as exc:
        log.error("%s: no metrics: cannot listen on %s:%d: %s", component, settings.metrics_host,
                  settings.metrics_port, exc)
        return None
    log.info("%s: metrics on http://%s:%d/metrics", component, settings.metrics_host, settings.metrics_port)
    return settings.metrics_host, settings.metrics_port
