"""The API's read model: a RocksDB projection of ``<p>.state`` with list indexes.

The API never asks a processor (DESIGN §8). The processor writes the latest
``TaskState`` of every task and ``ScheduleState`` of every cron schedule to
the compacted topic ``<p>.state`` (the changelog of its tables); this module
consumes that topic from the beginning of every partition and keeps a local
copy in RocksDB (``rocksdict``), plus secondary indexes for newest-first
listing overall and by status, priority and handler. Schedules live in
their own column family (``ScheduleStore``) with the same key layout and an
index by status; the gates of concurrency keys (``GateState``: holders,
waiting tasks, a rate's spent starts) in theirs (``GateStore``), by gate id.
A task's dependents are edge records of their own (``domain.edge_key``), kept under ``d:`` and shown in the task's
``dependents``. Any other record type, and tombstones, are skipped.

Two parts:

- ``TaskStore``: the database and its indexes; no Kafka, no threads of its
  own, unit-testable with a directory.
- ``ReadModel``: a ``TaskStore`` fed by a reader of the consumer runtime
  (``schemas.consumer``) assigned to every partition of ``<p>.state`` from
  the beginning (no consumer group: every API process keeps its own full
  copy), run by a daemon thread.

The database is deleted and rebuilt from the topic at every start. That is
the simplest correct choice: the topic is compacted, so a rebuild reads one
record per task, and we never have to reason about which offsets a stale
local copy had seen.

Key layout (raw bytes, ``:``-separated; index values are hex so they cannot
contain the separator)::

    s:<task_id>                                  -> codec.encode(TaskState)
    x:all:<sortkey>                              -> b""
    x:status:<hex(status)>:<sortkey>             -> b""
    x:priority:<hex(priority)>:<sortkey>         -> b""
    x:handler:<hex(handler)>:<sortkey>           -> b""
    q:<20-digit updated_at in µs>:<task_id>      -> b""   (queued tasks only, oldest first)
    d:<task_id>\x00<dependent id>                -> b""   (an edge record: the task's dependents, by id)
    x:workflow:<hex(workflow_id)>:<sortkey>      -> b""   (tasks of a workflow)
    w:<workflow_id>                              -> WorkflowSummary.encode()
    y:all:<wsortkey>                             -> b""   (workflows, newest first)
    y:status:<hex(workflow status)>:<wsortkey>   -> b""

    sortkey = <20-digit (10**19 - created_at in µs)>:<task_id>
    wsortkey = <20-digit (10**19 - workflow created_at in µs)>:<workflow_id>

so a forward scan of an index yields newest ``created_at`` first, ties by
task id ascending. The opaque list cursor is the sortkey of the last task
of a page (the API base64-encodes it).

A state is applied only if its ``version`` is >= the stored one, so replays
and the API's own read-your-writes insert never move a task backwards.

Workflows are not in ``<p>.state``: a task of a workflow carries its
``workflow_id``, and applying the task's state also updates, in the same
write, its workflow's ``WorkflowSummary`` (how many tasks are in each status,
the overall status by ``domain.workflow_status``, the times) and the
workflow list indexes. A workflow's creation time is its earliest task's
(every task of one ``POST /workflows`` has the same).

For ``GET /api/v1/stats`` the store also keeps, as it applies states, the
number of tasks per (status, priority) (in memory, exact: the database is
rebuilt at every start) and the finish times of the last minute (one counter
per second, ``FINISHED_WINDOW_S``); the oldest queued task is the first key
of the ``q:`` index (queued since its ``updated_at``: a queued task
does not change until an executor reports on it).
"""

from __future__ import annotations

import functools
import logging
import re
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from rocksdict import ColumnFamily, Options, Rdict, WriteBatch

from taskstream.schemas import (
    TERMINAL,
    ControlState,
    DecodeError,
    DependencyRegistered,
    GateState,
    ScheduleState,
    Settings,
    TaskState,
    Topics,
    TriggerState,
    WorkflowStatus,
    codec,
)
from taskstream.schemas.consumer import BEGINNING, ConsumerRuntime, Hooks
from taskstream.schemas.observability import about
from taskstream.schemas.state_cache import DecodedStates
from taskstream.streams import domain

from .watch import ChangeFeed

log = logging.getLogger(__name__)

_STATE = b"s:"
_INDEX = b"x:"
_ALL = b"x:all:"
_QUEUED = b"q:"
_DEPENDENTS = b"d:"
#: Dependents a task read shows (the first by id): a task may have any number, a response stays bounded.
SHOWN_DEPENDENTS = 1000
_WORKFLOW = b"w:"
_WF_INDEX = b"y:"
_WF_ALL = b"y:all:"
#: How far back ``TaskStore.finished_recently`` counts finished tasks.
FINISHED_WINDOW_S = 60
_INV_BASE = 10**19
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SORTKEY = re.compile(rb"^\d{20}:[^\x00]+$")
SCHEDULES_CF = "schedules"
GATES_CF = "gates"

#: Fields with a secondary index, in the order the list query prefers them
#: when several filters are given (the most selective first).
INDEXED_FIELDS: tuple[str, ...] = ("handler", "status", "priority")


def sortkey(state: TaskState | ScheduleState | WorkflowSummary) -> bytes:
    """The newest-first ordering key of a task (or schedule, workflow): inverted creation time, then id."""
    ident = state.workflow_id if isinstance(state, WorkflowSummary) else state.task_id
    return f"{_INV_BASE - _micros(state.created_at):020d}".encode() + b":" + ident.encode()


def _micros(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1)


def _at(micros: str) -> datetime | None:
    return _EPOCH + timedelta(microseconds=int(micros)) if micros else None


@dataclass(frozen=True, slots=True)
class WorkflowSummary:
    """What the read model keeps of a workflow: its tasks by status, its overall status and its times.

    ``created_at`` is its earliest task's; ``started_at`` the earliest start of any attempt of its tasks (None
    before the first); ``finished_at`` the latest finish of a task, shown only while the workflow is terminal
    (``finished``); ``updated_at`` the latest change of a task.
    """

    workflow_id: str
    created_at: datetime
    updated_at: datetime
    counts: Mapping[str, int] = field(default_factory=dict)
    started_at: datetime | None = None
    last_finished_at: datetime | None = None

    @property
    def status(self) -> str:
        return domain.workflow_status(self.counts).value

    @property
    def tasks(self) -> int:
        return sum(self.counts.values())

    @property
    def finished_at(self) -> datetime | None:
        return self.last_finished_at if self.status != WorkflowStatus.RUNNING else None

    def apply(self, old: TaskState | None, new: TaskState) -> WorkflowSummary:
        """This summary once ``new`` replaced ``old`` (None: a task it did not count yet)."""
        counts = Counter(self.counts)
        if old is not None:
            counts[old.status] -= 1
        counts[new.status] += 1
        return replace(
            self,
            counts={s: n for s, n in sorted(counts.items()) if n > 0},
            created_at=min(self.created_at, new.created_at),
            updated_at=max(self.updated_at, new.updated_at),
            started_at=_earliest(self.started_at, new.started_at),
            last_finished_at=_latest(self.last_finished_at, new.finished_at),
        )

    @classmethod
    def first(cls, task: TaskState) -> WorkflowSummary:
        """The summary of the workflow of ``task`` counting that task only."""
        assert task.workflow_id is not None
        return cls(task.workflow_id, task.created_at, task.updated_at).apply(None, task)

    def encode(self) -> bytes:
        fields = {"created": _micros(self.created_at), "updated": _micros(self.updated_at),
                  "started": "" if self.started_at is None else _micros(self.started_at),
                  "finished": "" if self.last_finished_at is None else _micros(self.last_finished_at)}
        return ";".join([*(f"{k}={v}" for k, v in fields.items()),
                         *(f"n.{s}={n}" for s, n in self.counts.items())]).encode()

    @classmethod
    def decode(cls, workflow_id: str, raw: bytes) -> WorkflowSummary:
        fields = dict(item.split("=", 1) for item in raw.decode().split(";"))
        counts = {k[2:]: int(v) for k, v in fields.items() if k.startswith("n.")}
        return cls(workflow_id, created_at=_EPOCH + timedelta(microseconds=int(fields["created"])),
                   updated_at=_EPOCH + timedelta(microseconds=int(fields["updated"])), counts=counts,
                   started_at=_at(fields["started"]), last_finished_at=_at(fields["finished"]))

    def index_keys(self) -> list[bytes]:
        sk = sortkey(self)
        return [_WF_ALL + sk, _workflow_status_prefix(self.status) + sk]


def _workflow_status_prefix(status: str) -> bytes:
    return _WF_INDEX + b"status:" + status.encode().hex().encode() + b":"


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else min(a, b)


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


def matches_prefix(state: TaskState, prefix: str) -> bool:
    """Whether the task's id, handler or name starts with ``prefix`` (the task list's search)."""
    return state.task_id.startswith(prefix) or state.handler.startswith(prefix) or state.name.startswith(prefix)


def is_sortkey(value: bytes) -> bool:
    """True if ``value`` has the shape of a sortkey (for validating cursors)."""
    return bool(_SORTKEY.match(value))


def _index_prefix(field: str, value: str) -> bytes:
    return _INDEX + field.encode() + b":" + value.encode().hex().encode() + b":"


def index_keys(state: TaskState) -> list[bytes]:
    """Every index key that points at ``state``."""
    sk = sortkey(state)
    keys = [_ALL + sk, *(_index_prefix(f, getattr(state, f)) + sk for f in INDEXED_FIELDS)]
    if domain.is_queued(state):
        micros = (state.updated_at - _EPOCH) // timedelta(microseconds=1)
        keys.append(_QUEUED + f"{micros:020d}".encode() + b":" + state.task_id.encode())
    if state.workflow_id:
        keys.append(_index_prefix("workflow", state.workflow_id) + sk)
    return keys


class TaskStore:
    """Latest ``TaskState`` per task in RocksDB, with newest-first indexes.

    Thread-safe: writes (``apply``) take a lock, because they read the stored
    version before writing; reads go straight to RocksDB.
    """

    def __init__(self, path: Path, *, fresh: bool = True) -> None:
        self.path = Path(path)
        if fresh and self.path.exists():
            shutil.rmtree(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(self.path), options=Options(raw_mode=True))
        self._lock = threading.Lock()
        self._applied = DecodedStates(codec.decode)  # what apply last stored, to skip decoding it again
        self._closed = False
        self.schedules = ScheduleStore(self._db)
        self.gates = GateStore(self._db)
        self._counts: Counter[tuple[str, str]] = Counter()
        self._finished: dict[int, Counter[str]] = {}  # epoch second -> finished tasks by status
        if not fresh:
            for state in self.all_states():
                self._counts[state.status, state.priority] += 1

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self.schedules.close()  # the column family holds the database open until it is closed
                self.gates.close()
                self._db.close()

    # ------------------------------------------------------------- writes

    def apply(self, state: TaskState, *, only_over_version: int | None = None, raw: bytes | None = None) -> bool:
        """Store ``state`` unless a newer version is stored; return whether it was stored.

        With ``only_over_version`` the state is stored only if the stored
        version is exactly that (compare-and-set): the API's expected view of
        a change it just wrote must not replace a state the processor already
        published for that version. ``raw``: the record ``state`` was decoded
        from, stored as it is when it is in the single-object framing (the
        store's own) instead of encoding ``state`` again.
        """
        key = _STATE + state.task_id.encode()
        with self._lock:
            stored = self._db.get(key)
            old = self._decode_applied(key, stored, state.task_id)
            if old is not None and state.version < old.version:
                return False
            if only_over_version is not None and (old is None or old.version != only_over_version):
                return False
            batch = WriteBatch(raw_mode=True)
            new_keys = index_keys(state)
            if old is not None:
                for k in set(index_keys(old)) - set(new_keys):
                    batch.delete(k)
            for k in new_keys:
                batch.put(k, b"")
            value = raw if raw is not None and raw[:2] == codec.MAGIC else codec.encode(state)
            batch.put(key, value)
            if state.workflow_id:
                self._summarize(batch, old, state)
            self._db.write(batch)
            self._applied.put(key, value, state)
            self._count(old, state)
            return True

    def _summarize(self, batch: WriteBatch, old: TaskState | None, state: TaskState) -> None:
        """Under the lock: put into ``batch`` the summary of ``state``'s workflow with ``state`` applied."""
        assert state.workflow_id is not None
        before = self.workflow(state.workflow_id)
        after = before.apply(old, state) if before is not None else WorkflowSummary.first(state)
        new_keys = after.index_keys()
        for k in set(before.index_keys() if before is not None else ()) - set(new_keys):
            batch.delete(k)
        for k in new_keys:
            batch.put(k, b"")
        batch.put(_WORKFLOW + state.workflow_id.encode(), after.encode())

    def _count(self, old: TaskState | None, new: TaskState) -> None:
        """Under the lock: move the task between (status, priority) counts; note a task that just finished."""
        if old is not None:
            self._counts[old.status, old.priority] -= 1
            if not self._counts[old.status, old.priority]:
                del self._counts[old.status, old.priority]
        self._counts[new.status, new.priority] += 1
        if (new.status in TERMINAL and new.finished_at is not None
                and (old is None or old.status not in TERMINAL)):
            second = int(new.finished_at.timestamp())
            now = int(datetime.now(UTC).timestamp())
            if second > now - FINISHED_WINDOW_S:
                self._finished.setdefault(second, Counter())[new.status] += 1
                for s in [s for s in self._finished if s <= now - FINISHED_WINDOW_S]:
                    del self._finished[s]

    # -------------------------------------------------------------- reads

    def get(self, task_id: str) -> TaskState | None:
        """The task's latest state, its ``dependents`` those its edges name (``add_dependent``; the first
        ``SHOWN_DEPENDENTS`` by id) and any its record embeds (``domain.with_dependents``)."""
        state = self._decode(self._db.get(_STATE + task_id.encode()), task_id)
        if state is None:
            return None
        return domain.with_dependents(state, self.dependents(task_id, SHOWN_DEPENDENTS))

    def add_dependent(self, upstream: str, dependent: str) -> None:
        """Record the edge ``upstream -> dependent`` (an edge record of ``<p>.state``; twice is once)."""
        self._db.put(_edges(upstream) + dependent.encode(), b"")

    def dependents(self, upstream: str, limit: int | None = None) -> list[str]:
        """The dependents the edges of ``upstream`` name, by id (at most ``limit``)."""
        out: list[str] = []
        for key in self._scan(_edges(upstream), None):
            if limit is not None and len(out) >= limit:
                break
            out.append(key.decode())
        return out

    def workflow(self, workflow_id: str) -> WorkflowSummary | None:
        """The summary of a workflow, None if no task of it is stored."""
        raw = self._db.get(_WORKFLOW + workflow_id.encode())
        return WorkflowSummary.decode(workflow_id, raw) if raw is not None else None

    def workflow_tasks(self, workflow_id: str, limit: int) -> list[TaskState]:
        """Up to ``limit`` tasks of a workflow, in the order of the task indexes (newest first, then id)."""
        found = []
        for sk in self._scan(_index_prefix("workflow", workflow_id), None):
            state = self.get(sk.split(b":", 1)[1].decode())
            if state is not None and state.workflow_id == workflow_id:
                found.append(state)
                if len(found) >= limit:
                    break
        return found

    def list_workflows(self, *, status: str | None = None, limit: int = 100,
                       after: bytes | None = None) -> tuple[list[WorkflowSummary], bytes | None]:
        """A page of workflows (of one overall ``status``), newest first, and the key to continue after (None at
        the end); cursors and stability as ``list``. Every index entry is a match (the summary and its index keys
        are written together), so no scan budget is needed."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        prefix = _workflow_status_prefix(status) if status is not None else _WF_ALL
        page: list[tuple[bytes, WorkflowSummary]] = []
        for sk in self._scan(prefix, after):
            summary = self.workflow(sk.split(b":", 1)[1].decode())
            if summary is None or sortkey(summary) != sk or (status is not None and summary.status != status):
                continue
            page.append((sk, summary))
            if len(page) > limit:
                return [s for _, s in page[:limit]], page[limit - 1][0]
        return [s for _, s in page], None

    def list(
        self,
        *,
        status: str | None = None,
        priority: str | None = None,
        handler: str | None = None,
        labels: dict[str, str] | None = None,
        prefix: str | None = None,
        limit: int = 100,
        after: bytes | None = None,
        max_scan: int | None = None,
    ) -> tuple[list[TaskState], bytes | None]:
        """A page of tasks, newest first, and the sortkey to continue after (None at the end).

        ``max_scan`` bounds the work: once that many index entries were
        examined and more remain, the page is returned as it is (fewer than
        ``limit`` tasks, possibly none) with the sortkey of the last entry
        examined, so a filter that matches few tasks of many costs each
        request at most ``max_scan`` entries and the client pages on.

        With several filters, the most selective index (handler, then status,
        then priority) is scanned and the other filters are checked on each
        state. Labels have no index: every label in ``labels`` must be on the
        task, checked on each state of the scanned index. ``prefix`` (a
        search) keeps the tasks whose id, handler or name starts with it,
        checked the same way.

        Pages are stable under concurrent inserts: the order is by creation
        time (newest first), then id, which never changes for a task, and the
        cursor is a position in that order rather than an offset; a task
        created after a page was served sorts before that page's cursor (up
        to clock skew between API processes), so later pages neither repeat
        nor skip older tasks. The state is re-read and re-checked, so an index key that a
        concurrent update is about to delete never yields a wrong task.
        """
        if limit < 1:
            raise ValueError("limit must be >= 1")
        search = prefix
        filters = {f: v for f, v in (("handler", handler), ("status", status), ("priority", priority)) if v is not None}
        if filters:
            field, value = next(iter(filters.items()))
            index = _index_prefix(field, value)
        else:
            index = _ALL
        if max_scan is not None and max_scan < 1:
            raise ValueError("max_scan must be >= 1")
        page: list[tuple[bytes, TaskState]] = []
        scanned, last = 0, None
        for sk in self._scan(index, after):
            if scanned == max_scan:
                return [s for _, s in page], last  # the budget is spent and entries remain
            scanned += 1
            last = sk
            state = self.get(sk.split(b":", 1)[1].decode())
            if state is None or sortkey(state) != sk:
                continue
            if all(getattr(state, f) == v for f, v in filters.items()) and (
                not labels or all(state.labels.get(k) == v for k, v in labels.items())
            ) and (not search or matches_prefix(state, search)):
                page.append((sk, state))
                if len(page) > limit:
                    break
        if len(page) > limit:
            return [s for _, s in page[:limit]], page[limit - 1][0]
        return [s for _, s in page], None

    def _scan(self, prefix: bytes, after: bytes | None) -> Iterator[bytes]:
        return _scan(self._db, prefix, after)

    def counts(self) -> Counter[tuple[str, str]]:
        """Number of tasks per (status, priority), kept as states are applied (no scan)."""
        with self._lock:
            return Counter(self._counts)

    def finished_recently(self, now: datetime | None = None) -> Counter[str]:
        """Tasks that finished (reached a terminal status) in the last ``FINISHED_WINDOW_S`` seconds, by status.

        Counted by ``finished_at`` as the states arrive: a task finished
        before the API started counts too if its ``finished_at`` is recent.
        """
        cutoff = int((now or datetime.now(UTC)).timestamp()) - FINISHED_WINDOW_S
        with self._lock:
            out: Counter[str] = Counter()
            for second, by_status in self._finished.items():
                if second > cutoff:
                    out.update(by_status)
            return out

    def finished_by_second(self) -> dict[int, Counter[str]]:
        """A copy of the counters behind ``finished_recently``: epoch second -> tasks finished then, by status."""
        with self._lock:
            return {second: Counter(by_status) for second, by_status in self._finished.items()}

    def oldest_queued(self) -> TaskState | None:
        """The task that has been queued longest (first key of the ``q:`` index), or None."""
        for key in self._scan(_QUEUED, None):
            state = self.get(key.split(b":", 1)[1].decode())
            if domain.is_queued(state):
                return state
        return None

    def all_states(self) -> Iterable[TaskState]:
        """Every stored state (tests, debugging)."""
        for sk in self._scan(_ALL, None):
            state = self.get(sk.split(b":", 1)[1].decode())
            if state is not None:
                yield state

    @staticmethod
    def _decode(raw: bytes | None, task_id: str, decode: Callable[[bytes], Any] | None = None) -> TaskState | None:
        """The stored state ``raw`` of ``task_id`` (``decode``: ``codec.decode`` or the decoded-state cache's), or
        None: none is stored, or it is unreadable (logged)."""
        if raw is None:
            return None
        try:
            return cast(TaskState, (decode or codec.decode)(raw))
        except DecodeError as exc:  # cannot happen unless the files were tampered with
            log.error("read model: stored state of task_id=%s is unreadable: %s", task_id, exc, extra=about(task_id))
            return None

    def _decode_applied(self, key: bytes, raw: bytes | None, task_id: str) -> TaskState | None:
        """Under the lock: ``_decode``, without decoding again the record ``apply`` stored last for ``key``."""
        return self._decode(raw, task_id, functools.partial(self._applied.decode, key))


def _edges(upstream: str) -> bytes:
    return _DEPENDENTS + upstream.encode() + b"\x00"


def _scan(db: Rdict, prefix: bytes, after: bytes | None) -> Iterator[bytes]:
    """The keys of ``db`` under ``prefix`` (prefix removed) in order, starting after ``prefix + after``."""
    it = db.iter()
    try:
        start = prefix + after if after else prefix
        it.seek(start)
        if after and it.valid() and it.key() == start:
            it.next()
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                return
            yield key[len(prefix):]
            it.next()
    finally:
        del it


class ScheduleStore:
    """Latest ``ScheduleState`` per schedule, in the ``schedules`` column family of the read model's database.

    Keys as in ``TaskStore`` (``s:<id>``, ``x:all:<sortkey>``,
    ``x:status:<hex(status)>:<sortkey>``) but in their own column family, so
    task scans never see a schedule. Created by ``TaskStore`` (one database,
    deleted and rebuilt at every start); closed with it.
    """

    def __init__(self, db: Rdict) -> None:
        self._db = db
        self._cf: Rdict | None
        self._handle: ColumnFamily | None
        try:  # rocksdict opens the column families a reopened (``fresh=False``) database already has
            self._cf = db.get_column_family(SCHEDULES_CF)
        except Exception:
            self._cf = db.create_column_family(SCHEDULES_CF, Options(raw_mode=True))
        self._handle = db.get_column_family_handle(SCHEDULES_CF)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Release the column family (``TaskStore.close`` calls this before closing the database)."""
        with self._lock:
            if self._cf is not None:
                self._cf.close()
                self._cf = self._handle = None

    def _open(self) -> tuple[Rdict, ColumnFamily]:
        """The column family and its handle; ``RuntimeError`` once closed."""
        if self._cf is None or self._handle is None:
            raise RuntimeError("the schedule store is closed")
        return self._cf, self._handle

    @staticmethod
    def _index_keys(state: ScheduleState) -> list[bytes]:
        sk = sortkey(state)
        return [_ALL + sk, _index_prefix("status", state.status) + sk]

    def apply(
        self, state: ScheduleState, *, only_over_version: int | None = None, only_if_absent: bool = False
    ) -> bool:
        """Store ``state`` unless a newer version is stored (see ``TaskStore.apply``); return whether it was.

        ``only_if_absent``: store it only if the schedule is not stored at all
        (the API's own guess of a schedule it just created must not replace
        the processor's state of it).
        """
        key = _STATE + state.schedule_id.encode()
        with self._lock:
            cf, handle = self._open()
            old = self._decode(cf.get(key), state.schedule_id)
            if old is not None and (only_if_absent or state.version < old.version):
                return False
            if only_over_version is not None and (old is None or old.version != only_over_version):
                return False
            batch = WriteBatch(raw_mode=True)
            new_keys = self._index_keys(state)
            if old is not None:
                for k in set(self._index_keys(old)) - set(new_keys):
                    batch.delete(k, handle)
            for k in new_keys:
                batch.put(k, b"", handle)
            batch.put(key, codec.encode(state), handle)
            self._db.write(batch)
            return True

    def get(self, schedule_id: str) -> ScheduleState | None:
        return self._decode(self._open()[0].get(_STATE + schedule_id.encode()), schedule_id)

    def list(self, *, status: str | None = None, limit: int = 100,
             after: bytes | None = None) -> tuple[list[ScheduleState], bytes | None]:
        """A page of schedules, newest first, and the sortkey to continue after (None at the end); as
        ``TaskStore.list``."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        prefix = _index_prefix("status", status) if status is not None else _ALL
        page: list[tuple[bytes, ScheduleState]] = []
        for sk in _scan(self._open()[0], prefix, after):
            state = self.get(sk.split(b":", 1)[1].decode())
            if state is None or sortkey(state) != sk or (status is not None and state.status != status):
                continue
            page.append((sk, state))
            if len(page) > limit:
                return [s for _, s in page[:limit]], page[limit - 1][0]
        return [s for _, s in page], None

    @staticmethod
    def _decode(raw: bytes | None, schedule_id: str) -> ScheduleState | None:
        if raw is None:
            return None
        try:
            state = codec.decode(raw)
        except DecodeError as exc:  # cannot happen unless the files were tampered with
            log.error("read model: stored state of schedule_id=%s is unreadable: %s", schedule_id, exc)
            return None
        return state if isinstance(state, ScheduleState) else None


class GateStore:
    """Latest ``GateState`` per concurrency key, in the ``gates`` column family, keyed by gate id (so listed in
    key order); ``totals`` are kept as states are applied, for metrics without a scan. Created and closed by
    ``TaskStore``."""

    def __init__(self, db: Rdict) -> None:
        self._db = db
        try:
            self._cf: Rdict | None = db.get_column_family(GATES_CF)
        except Exception:
            self._cf = db.create_column_family(GATES_CF, Options(raw_mode=True))
        self._lock = threading.Lock()
        self._sizes: dict[str, tuple[int, int]] = {}  # gate id -> (holders, waiting)

    def close(self) -> None:
        with self._lock:
            if self._cf is not None:
                self._cf.close()
                self._cf = None

    def _open(self) -> Rdict:
        if self._cf is None:
            raise RuntimeError("the gate store is closed")
        return self._cf

    def apply(self, state: GateState) -> bool:
        """Store ``state`` unless a newer version is stored; return whether it was."""
        key = state.gate_id.encode()
        with self._lock:
            cf = self._open()
            old = self._decode(cf.get(key))
            if old is not None and state.version < old.version:
                return False
            cf[key] = codec.encode(state)
            self._sizes[state.gate_id] = (len(state.holders), len(state.waiting))
            return True

    def get(self, gate_id: str) -> GateState | None:
        return self._decode(self._open().get(gate_id.encode()))

    def list(self, *, limit: int = 100, after: bytes | None = None) -> tuple[list[GateState], bytes | None]:
        """A page of gates in gate id order, and the gate id to continue after (None at the end)."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        page: list[GateState] = []
        for key in _scan(self._open(), b"", after):
            state = self.get(key.decode())
            if state is None:
                continue
            page.append(state)
            if len(page) > limit:
                return page[:limit], page[limit - 1].gate_id.encode()
        return page, None

    def totals(self) -> tuple[int, int, int]:
        """(gates, attempts holding a slot, tasks waiting) over every key."""
        with self._lock:
            sizes = list(self._sizes.values())
        return len(sizes), sum(h for h, _ in sizes), sum(w for _, w in sizes)

    @staticmethod
    def _decode(raw: bytes | None) -> GateState | None:
        if raw is None:
            return None
        try:
            state = codec.decode(raw)
        except DecodeError as exc:  # cannot happen unless the files were tampered with
            log.error("read model: a stored gate is unreadable: %s", exc)
            return None
        return state if isinstance(state, GateState) else None


class ReadModel(Hooks):
    """A ``TaskStore`` kept up to date from ``<p>.state`` by a daemon thread (the hooks of a reader runtime).

    ``caught_up`` turns true once every partition was consumed up to the high
    watermark read when the consumer was assigned (or reported end of
    partition): every state the processor had published by then is applied.

    The consumer never commits and never joins a group (a reader of
    ``schemas.consumer``). A failure before it caught up starts it over with
    a new client; after, it goes on with the one it has.
    """

    def __init__(self, settings: Settings, *, connect_timeout: float = 2.0) -> None:
        self.settings = settings
        self.wire = codec.WireFormat.of(settings)
        self.topic = Topics(settings.prefix).state
        self.store = TaskStore(Path(settings.data_dir) / "read-model")
        self.schedules = self.store.schedules
        #: Every topic trigger by name (few; kept in memory, like the pauses).
        self.triggers: dict[str, TriggerState] = {}
        #: Each partition's copy of every pause (control id -> state; few: one per partition per paused target).
        self.controls: dict[str, ControlState] = {}
        #: Every task state read from the topic goes through the feed into the store (live updates, api/watch.py).
        self.feed = ChangeFeed(settings.watch_ring_size, settings.watch_queue_limit)
        self._connect_timeout = connect_timeout
        self._caught_up = threading.Event()
        self._pending: dict[int, int] = {}
        self._positions: dict[int, int] = {}
        self.problem: str | None = "not started"
        self.runtime = ConsumerRuntime.reader(settings, self, client_id="taskstream-api-read-model", poll_s=0.2,
                                              overrides={"enable.auto.offset.store": False,
                                                         "enable.partition.eof": True,
                                                         "auto.offset.reset": "earliest"})

    # ------------------------------------------------------------ lifecycle

    def start(self) -> ReadModel:
        self.runtime.start_thread("api-read-model")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if not self.runtime.stop_thread(timeout):
            log.warning("read model consumer thread did not stop within %.1fs", timeout)
            return  # leave the DB open rather than close it under the thread
        self.store.close()

    @property
    def caught_up(self) -> bool:
        return self._caught_up.is_set()

    def wait_caught_up(self, timeout: float) -> bool:
        return self._caught_up.wait(timeout)

    def positions(self) -> dict[int, int]:
        """Next offset to read per partition of ``<p>.state`` (partitions not read from yet are absent).

        With the topic's end offsets this gives the projection's lag
        (``/readyz``).
        """
        return dict(self._positions)

    # -------------------------------------------------------------- hooks

    def on_connect(self, runtime: ConsumerRuntime) -> None:
        partitions = runtime.partitions(self.topic, self._connect_timeout)
        pending = {}
        for p in partitions:
            low, high = runtime.watermarks((self.topic, p), timeout=self._connect_timeout)
            if high > low:
                pending[p] = high
        self._pending = pending
        self._positions = {}
        runtime.assign({(self.topic, p): BEGINNING for p in partitions})
        log.info("read model: assigned %d partitions of %s, catching up to %s", len(partitions), self.topic, pending)
        self.problem = None if not pending else "catching up"
        self._check_caught_up()

    def on_failure(self, runtime: ConsumerRuntime, exc: Exception) -> bool:
        self.problem = f"state topic consumer: {exc}"
        return not self.caught_up

    def on_end(self, runtime: ConsumerRuntime, partition: tuple[str, int], offset: int) -> None:
        self._positions[partition[1]] = offset
        self._pending.pop(partition[1], None)
        self._check_caught_up()

    def on_batch(self, runtime: ConsumerRuntime, records: list) -> None:
        for msg in records:
            self._handle(msg)

    def _handle(self, msg) -> None:
        partition, offset = msg.partition(), msg.offset()
        self._positions[partition] = offset + 1
        high = self._pending.get(partition)
        if high is not None and offset + 1 >= high:
            del self._pending[partition]
            self._check_caught_up()
        value = msg.value()
        key = msg.key()
        if not value:
            log.debug("read model: skipped tombstone key=%r at %s/%d", key, partition, offset)
            return
        try:
            state = self.wire.decode(value)
        except DecodeError as exc:
            log.warning("read model: skipped undecodable record key=%r at %s/%d: %s", key, partition, offset, exc)
            return
        if isinstance(state, TaskState):
            self.feed.apply(partition, offset, state, lambda s: self.store.apply(s, raw=value))
        elif isinstance(state, DependencyRegistered) and domain.is_edge_key(key or b""):
            # Before the state record that counts it: a read of the task after that record shows the dependent.
            self.store.add_dependent(state.task_id, state.dependent)
        elif isinstance(state, ScheduleState):
            self.schedules.apply(state)
        elif isinstance(state, GateState):
            self.store.gates.apply(state)
        elif isinstance(state, TriggerState):
            self.keep_trigger(state)
        elif isinstance(state, ControlState):
            # One partition's copy of a pause (``api.service.pauses``); a newer version replaces an older one.
            have = self.controls.get(state.control_id)
            if have is None or have.version <= state.version:
                self.controls[state.control_id] = state
        else:
            log.debug("read model: skipped %s record key=%r at %s/%d", type(state).__name__, key, partition, offset)

    def keep_trigger(self, state: TriggerState) -> TriggerState:
        """Keep ``state`` unless a newer version of the trigger is kept; the one kept."""
        have = self.triggers.get(state.name)
        if have is None or have.version <= state.version:
            self.triggers[state.name] = have = state
        return have

    def _check_caught_up(self) -> None:
        if not self._pending and not self._caught_up.is_set():
            self.problem = None
            self._caught_up.set()
            log.info("read model: caught up with %s", self.topic)
