"""The workers directory: every executor's latest report, folded from ``<p>.workers``, and the rule of when it is gone.

Executors report themselves (``executors.presence``) to the compacted
``<p>.workers``, keyed by executor id: every ``interval_s`` seconds (the
executor's ``worker_report_interval_s``, carried in each report) and when
their assignment changes, and a tombstone when they stop cleanly. Each API
process folds the topic with one reader thread (``WorkerDirectory``, the
hooks of a reader ``ConsumerRuntime`` assigned to the topic from its
beginning, like ``api.keys``) into a dict by executor id; ``GET
/api/v1/workers`` answers from it with no broker call.

The rule (pure, ``fold`` and ``status``): a report's time is when the broker
appended it (the topic stamps records with ``LogAppendTime``, one clock for
every executor; the report's own ``reported_at`` when a broker gives no such
stamp). A worker is ``alive`` while its last report is at most
``GONE_AFTER_INTERVALS`` of its own intervals old, ``gone`` after that, and
no longer listed ``FORGET_AFTER_S`` after its last report (or at once, on
its tombstone). An API that restarts reads the same stamps, so a worker that
died while no API watched is gone at once, not alive for another bound.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from taskstream.schemas import DecodeError, Settings, Topics, codec
from taskstream.schemas.consumer import BEGINNING, ConsumerRuntime, Hooks
from taskstream.schemas.events import WorkerReport

log = logging.getLogger(__name__)

#: A worker is ``gone`` once its last report is older than this many of its report intervals.
GONE_AFTER_INTERVALS = 3
#: A worker that stopped reporting is no longer listed this long after its last report.
FORGET_AFTER_S = 3600.0
#: Longest single poll of the reader thread: bounds how late it sees a stop.
POLL_S = 0.25
ALIVE, GONE = "alive", "gone"
#: librdkafka's timestamp type of a record stamped by the broker (``confluent_kafka.TIMESTAMP_LOG_APPEND_TIME``).
_LOG_APPEND_TIME = 2


@dataclass(frozen=True, slots=True)
class Worker:
    """One executor as the directory knows it: its latest report and when that report was written."""

    report: WorkerReport
    seen_at: datetime

    @property
    def gone_after_s(self) -> float:
        return GONE_AFTER_INTERVALS * self.report.interval_s


def fold(workers: dict[str, Worker], key: str, report: WorkerReport | None, seen_at: datetime | None) -> None:
    """Apply one record of ``<p>.workers`` to ``workers`` (executor id -> ``Worker``): a tombstone (``report`` None)
    removes ``key``; a report replaces an older one (one written before the one held is ignored, so a record read
    twice or out of order changes nothing). ``seen_at``: the broker's stamp, or None for the report's own time."""
    if report is None:
        workers.pop(key, None)
        return
    at = seen_at or report.reported_at
    held = workers.get(key)
    if held is not None and held.seen_at > at:
        return
    workers[key] = Worker(report, at)


def status(worker: Worker, now: datetime) -> str | None:
    """``alive``, ``gone``, or None when it is no longer listed (see the module docstring)."""
    age = (now - worker.seen_at).total_seconds()
    if age > max(FORGET_AFTER_S, worker.gone_after_s):
        return None
    return GONE if age > worker.gone_after_s else ALIVE


def listing(workers: dict[str, Worker], now: datetime) -> list[tuple[Worker, str]]:
    """The workers still listed with their status: alive ones first, then by host and id."""
    shown = [(w, s) for w in workers.values() if (s := status(w, now)) is not None]
    return sorted(shown, key=lambda ws: (ws[1] != ALIVE, ws[0].report.host, ws[0].report.executor_id))


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def worker_json(worker: Worker, state: str, now: datetime) -> dict[str, Any]:
    """A worker as ``GET /api/v1/workers`` shows it."""
    r = worker.report
    age = max(0.0, (now - worker.seen_at).total_seconds())
    partitions = []
    for p in r.partitions:
        topic, _, number = p.rpartition(":")
        partitions.append({"topic": topic, "partition": int(number) if number.isdigit() else number})
    return {
        "id": r.executor_id, "status": state, "host": r.host, "pid": r.pid, "version": r.version,
        "handlers": list(r.handlers), "concurrency": r.concurrency, "in_flight": r.in_flight,
        "running": list(r.running), "partitions": partitions, "started_at": _iso(r.started_at),
        "last_seen": _iso(worker.seen_at), "last_seen_age_s": round(age, 3),
        "report_interval_s": r.interval_s, "gone_after_s": worker.gone_after_s,
        "gone_at": _iso(worker.seen_at + timedelta(seconds=worker.gone_after_s)),
    }


class WorkerDirectory(Hooks):
    """Every executor's latest report, kept current by a daemon thread (the hooks of a reader runtime).

    ``problem`` says why the directory may be behind (the topic is missing,
    the broker away), None while it reads; ``loaded`` turns true once it has
    read the topic to the end it had when the thread connected.
    """

    def __init__(self, settings: Settings, *, connect_timeout: float = 2.0) -> None:
        self.topic = Topics(settings.prefix).workers
        self.wire = codec.WireFormat.of(settings)
        self._timeout = connect_timeout
        self._lock = threading.Lock()
        self._workers: dict[str, Worker] = {}
        self._ends: dict[int, int] = {}
        self.loaded = False
        self.problem: str | None = "not started"
        self.runtime = ConsumerRuntime.reader(settings, self, client_id="taskstream-api-workers", poll_s=POLL_S,
                                              overrides={"enable.partition.eof": True,
                                                         "auto.offset.reset": "earliest"})

    def start(self) -> WorkerDirectory:
        self.runtime.start_thread("api-workers")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.runtime.stop_thread(timeout)

    def snapshot(self) -> dict[str, Worker]:
        with self._lock:
            return dict(self._workers)

    def listing(self, now: datetime) -> list[tuple[Worker, str]]:
        return listing(self.snapshot(), now)

    # ---------------------------------------------------------- hooks

    def on_connect(self, runtime: ConsumerRuntime) -> None:
        partitions = runtime.partitions(self.topic, self._timeout)
        self._ends = {p: runtime.watermarks((self.topic, p), timeout=self._timeout)[1] for p in partitions}
        with self._lock:  # read again from the start: what was folded stays until a record replaces it
            self.loaded = not any(self._ends.values())
        self.problem = None
        runtime.assign({(self.topic, p): BEGINNING for p in partitions})

    def on_failure(self, runtime: ConsumerRuntime, exc: Exception) -> bool:
        self.problem = str(exc)  # never die: the listing ages (workers turn gone), then catches up
        return True

    def on_batch(self, runtime: ConsumerRuntime, records: list) -> None:
        for msg in records:
            self._handle(msg)
            if not self.loaded and msg.offset() + 1 >= self._ends.get(msg.partition(), 0):
                self._loaded_up_to(msg.partition())

    def on_end(self, runtime: ConsumerRuntime, partition: tuple[str, int], offset: int) -> None:
        if not self.loaded:
            self._loaded_up_to(partition[1])

    def _loaded_up_to(self, partition: int) -> None:
        self._ends[partition] = 0
        if not any(self._ends.values()):
            self.loaded = True

    def _handle(self, msg: Any) -> None:
        key = (msg.key() or b"").decode(errors="replace")
        if msg.value() is None:
            with self._lock:
                fold(self._workers, key, None, None)
            return
        try:
            report = self.wire.decode(msg.value())
        except DecodeError as exc:
            log.warning("workers: skipping an undecodable record at %s[%d]@%d: %s",
                        self.topic, msg.partition(), msg.offset(), exc)
            return
        if not isinstance(report, WorkerReport):
            return
        kind, ms = msg.timestamp()
        seen_at = datetime.fromtimestamp(ms / 1000, UTC) if kind == _LOG_APPEND_TIME and ms > 0 else None
        with self._lock:
            fold(self._workers, key or report.executor_id, report, seen_at)



def workers_body(directory: WorkerDirectory, now: datetime, state: str | None = None) -> dict[str, Any]:
    """The answer of ``GET /api/v1/workers`` (and gRPC ``ListWorkers``): the workers listed now, only those of
    ``state`` (``alive`` or ``gone``) when given, and the bounds of the rule."""
    shown = [worker_json(w, s, now) for w, s in directory.listing(now) if state is None or s == state]
    body: dict[str, Any] = {"as_of": _iso(now), "workers": shown, "gone_after_intervals": GONE_AFTER_INTERVALS,
                            "forget_after_s": FORGET_AFTER_S, "loaded": directory.loaded}
    if directory.problem is not None:
        body["problem"] = f"{directory.topic}: {directory.problem}"
    return body
