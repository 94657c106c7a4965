"""Presence: an executor reporting itself to ``<p>.workers``, so the API can list who runs what.

Beside the intake, dispatcher and attempt runner of a run (``runtime.Executor``),
``Presence`` writes one ``WorkerReport`` keyed by the executor id to the
compacted ``<p>.workers``: at start, every ``settings.worker_report_interval_s``
and as soon as it sees the assignment of ready-topic partitions change
(it looks every ``CHANGE_CHECK_S``). A clean stop ends with a tombstone of
the key, after the executor left its group, so the API drops it at once; an
executor that dies without one stops reporting and the API shows it as
``gone`` (``api.workers`` holds that rule). A report is fire-and-forget on
the executor's own producer: a report that fails is logged and the next one
goes on; nothing about presence can stop or slow an attempt.
docs/decisions/0021-workers-topic.md says why a topic and not the group's metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from importlib import metadata

from taskstream.schemas import BrokerUnavailable, RecordRefused, Topics, WriteOutcomeUnknown, codec
from taskstream.schemas.events import WorkerReport
from taskstream.schemas.kafka import AsyncProducer

log = logging.getLogger(__name__)

#: How often the assignment is compared with the last report's (a change is reported at most this late).
CHANGE_CHECK_S = 0.5
#: A report names at most this many running task ids (``in_flight`` counts them all).
MAX_RUNNING_IDS = 100
#: How long a clean stop waits for its tombstone to be acknowledged.
TOMBSTONE_TIMEOUT_S = 5.0

Partition = tuple[str, int]


def _version() -> str:
    try:
        return metadata.version("taskstream")
    except metadata.PackageNotFoundError:
        return "unknown"


def report(*, executor_id: str, host: str, pid: int, version: str, handlers: Iterable[str], concurrency: int,
           partitions: Iterable[Partition], running: list[str], started_at: datetime, now: datetime,
           interval_s: float) -> WorkerReport:
    """The report of one moment: handlers sorted, partitions as sorted ``<topic>:<partition>``, at most
    ``MAX_RUNNING_IDS`` of the ``running`` task ids (``in_flight`` counts every one)."""
    return WorkerReport(
        executor_id=executor_id, host=host, pid=pid, version=version, handlers=sorted(set(handlers)),
        concurrency=concurrency, partitions=[f"{t}:{p}" for t, p in sorted(partitions)], in_flight=len(running),
        running=running[:MAX_RUNNING_IDS], started_at=started_at, reported_at=now, interval_s=interval_s)


class Presence:
    """Reports of one executor run to ``<p>.workers``.

    ``assignment()`` (the consumer's partitions) and ``running()`` (task ids
    of the attempts running) are asked on the loop at each report; both must
    be cheap and thread-safe. ``run(stop)`` reports until ``stop`` is set;
    ``leave()`` writes the tombstone (call it once the group is left).
    """

    def __init__(self, executor_id: str, topics: Topics, wire: codec.WireFormat, producer: AsyncProducer, *,
                 handlers: list[str], concurrency: int, interval_s: float,
                 assignment: Callable[[], set[Partition]], running: Callable[[], list[str]]) -> None:
        self.executor_id = executor_id
        self.topic = topics.workers
        self.interval_s = interval_s
        self._wire = wire
        self._producer = producer
        self._handlers = handlers
        self._concurrency = concurrency
        self._assignment = assignment
        self._running = running
        self._host = socket.gethostname()
        self._pid = os.getpid()
        self._version = _version()
        self._started_at = datetime.now(UTC)
        self._key = executor_id.encode()
        self._reported: set[Partition] | None = None
        self._failing = False
        #: Reports written (acknowledged or not), for tests and logs.
        self.sent = 0

    def current(self, partitions: set[Partition] | None = None) -> WorkerReport:
        """The report of now (``partitions``: the assignment, if the caller just asked for it)."""
        partitions = self._assignment() if partitions is None else partitions
        return report(executor_id=self.executor_id, host=self._host, pid=self._pid, version=self._version,
                      handlers=self._handlers, concurrency=self._concurrency, partitions=partitions,
                      running=self._running(), started_at=self._started_at, now=datetime.now(UTC),
                      interval_s=self.interval_s)

    async def run(self, stop: asyncio.Event) -> None:
        """Report now, then every ``interval_s`` and whenever the assignment differs from the last report's."""
        loop = asyncio.get_running_loop()
        due = 0.0
        while not stop.is_set():
            assigned = self._assignment()
            if loop.time() >= due or assigned != self._reported:
                self._send(assigned)
                due = loop.time() + self.interval_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(CHANGE_CHECK_S, max(0.0, due - loop.time())))

    def _send(self, assigned: set[Partition]) -> None:
        value = self.current(assigned)
        self._reported = assigned
        try:
            self._producer.produce(self.topic, self._key, self._wire.encode(value), codec.headers(value),
                                   on_delivery=self._delivered)
            self.sent += 1
        except (BrokerUnavailable, RecordRefused) as exc:
            self._problem(f"not written: {exc}")

    def _delivered(self, err, _msg) -> None:
        if err is not None:
            self._problem(f"not acknowledged: {err.str()}")
        elif self._failing:
            self._failing = False
            log.info("executor %s: reports to %s written again", self.executor_id, self.topic)

    def _problem(self, why: str) -> None:
        if not self._failing:  # once per outage; the next report tries again
            self._failing = True
            log.warning("executor %s: report to %s %s", self.executor_id, self.topic, why)

    async def leave(self) -> bool:
        """Write the tombstone of this executor's key; whether it was acknowledged within
        ``TOMBSTONE_TIMEOUT_S`` (if not, readers see the executor gone after their bound)."""
        try:
            await asyncio.wait_for(self._producer.send(self.topic, self._key, None), TOMBSTONE_TIMEOUT_S)
            return True
        except (BrokerUnavailable, RecordRefused, WriteOutcomeUnknown, TimeoutError) as exc:
            log.warning("executor %s: tombstone to %s not written: %s", self.executor_id, self.topic, exc)
            return False
