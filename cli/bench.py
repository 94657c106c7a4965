"""`taskstream bench`: submit N no-op tasks over HTTP, report throughput and latency.

The bench is a client like any other: it talks to the HTTP API only,
through ``taskstream.client`` (one ``Client``, a keep-alive connection, per
client thread; credentials from ``TASKSTREAM_TOKEN``/``TASKSTREAM_API_KEY``).

Without ``--url`` it starts a whole ``taskstream dev`` stack as a subprocess
on free loopback ports (its own Kafka node unless
``TASKSTREAM_BOOTSTRAP_SERVERS`` is set), logging at WARNING unless
``TASKSTREAM_LOG_LEVEL`` says otherwise (per-request INFO lines would cost
the 2-core machines we measure on more than the work), and stops it at the
end. With ``--url`` it targets a running API.

Steps: wait for ``/readyz``; warm up (``WARMUP`` tasks, waited for, so the
executors have joined their group); submit ``count`` ``noop`` tasks from
``clients`` threads, remembering the wall-clock time just before each POST;
wait until every task is ``succeeded``. Waiting is kept light so the bench
does not steal the system's CPU: while the run goes on only a sample of the
tasks is polled (one GET each); then one scan of
``GET /api/v1/tasks?status=succeeded`` (newest first, stopping at tasks older
than the run) collects the tasks' own timestamps, and stragglers are fetched
one by one.

Figures, all from the tasks' own ``started_at``/``finished_at`` (UTC, same
machine as the client, so wall clocks compare):

- submit: how long the POSTs took, their rate, and one POST's round trip
  p50/p99 (the API answers 202 once the broker acknowledged the event);
- end-to-end throughput: tasks / (last ``finished_at`` - first submit);
- submit->start latency p50/p95/p99: ``started_at`` - the client's time just
  before that task's POST;
- submit->finish latency p50/p99: ``finished_at`` - the same;
- wall time: first submit until the bench saw the last task succeed.

Errors (API unreachable, a POST refused, a task that did not succeed, no
progress for ``STALL_S``) print one clear line and exit non-zero.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from itertools import pairwise
from typing import TYPE_CHECKING

from taskstream.client import Client as ApiClient
from taskstream.client import Task, TaskstreamError, WaitTimeout

if TYPE_CHECKING:
    from .bench_grpc import GrpcClient

WARMUP = 50
READY_TIMEOUT_S = 120.0
#: With --url the API should already be up: a short wait covers one that is just starting.
URL_READY_TIMEOUT_S = 5.0
WARMUP_TIMEOUT_S = 120.0
#: Give up when no task has finished for this long.
STALL_S = 60.0
POLL_S = 0.25
SAMPLE = 20
PAGE = 1000
HTTP_TIMEOUT_S = 30.0
DEV_STOP_TIMEOUT_S = 30.0

NOT_SUCCEEDED_TERMINAL = {"failed", "cancelled", "upstream_failed"}


class BenchError(Exception):
    """A failure to report in one line (no traceback)."""


def _say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# -------------------------------------------------------------------- HTTP


class Client:
    """``taskstream.client.Client`` whose refusals are ``BenchError`` (one line, no traceback)."""

    def __init__(self, url: str) -> None:
        if not url.startswith(("http://", "https://")):
            raise BenchError(f"--url must look like http://host:port, got {url!r}")
        self.url = url
        self.api = ApiClient(url, timeout=HTTP_TIMEOUT_S)

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except TaskstreamError as exc:
            raise BenchError(f"{what}: {exc}" if exc.status is not None else str(exc)) from None

    def get_task(self, task_id: str) -> Task:
        with self._errors(f"GET task {task_id}"):
            return self.api.get(task_id)

    def submit(self, handler: str = "noop", payload=None) -> str:
        with self._errors("POST /api/v1/tasks"):
            return self.api.submit(handler, payload if payload is not None else {}).id

    def submit_batch(self, n: int, handler: str = "noop") -> list[str]:
        with self._errors("POST /api/v1/tasks:batch"):
            return [t.id for t in self.api.submit_many([{"handler": handler, "payload": {}}] * n)]

    def close(self) -> None:
        self.api.close()


def wait_ready(url: str, timeout: float, dev: DevStack | None = None) -> None:
    client = Client(url)
    deadline = time.monotonic() + timeout
    last = "no answer"
    try:
        while time.monotonic() < deadline:
            if dev is not None:
                dev.check_alive()
            try:
                client.api.ready()
                return
            except TaskstreamError as exc:
                last = str(exc)
            time.sleep(0.25)
    finally:
        client.close()
    raise BenchError(f"the API at {url} was not ready within {timeout:.0f}s ({last})")


# ------------------------------------------------------------- dev stack


class DevStack:
    """A `taskstream dev` subprocess on free ports; its output goes to a log file."""

    def __init__(self, executors: int) -> None:
        from .broker import free_port

        self.api_port = free_port()
        self.broker_port = free_port()
        self.executors = executors
        self.log = tempfile.NamedTemporaryFile(prefix="taskstream-bench-dev-", suffix=".log", delete=False)
        self.proc: subprocess.Popen | None = None
        self.data_dir: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> DevStack:
        # a log of its own, never the user's ./.taskstream; deleted with the stack
        self.data_dir = tempfile.TemporaryDirectory(prefix="taskstream-bench-data-")
        env = {**os.environ}
        env.setdefault("TASKSTREAM_LOG_LEVEL", "WARNING")
        cmd = [
            sys.executable, "-m", "taskstream.cli.main", "dev",
            "--port", str(self.api_port), "--broker-port", str(self.broker_port),
            "--executors", str(self.executors), "--data-dir", self.data_dir.name,
        ]
        self.proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"`taskstream dev` exited with {self.proc.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        try:
            with open(self.log.name, errors="replace") as f:
                return "".join(f.readlines()[-lines:]).rstrip()
        except OSError:
            return ""

    def stop(self, keep_log: bool = False) -> None:
        """SIGTERM (dev stops its children and broker), SIGKILL if it hangs; the log goes unless kept."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(DEV_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _say(f"`taskstream dev` did not stop within {DEV_STOP_TIMEOUT_S:.0f}s; "
                     f"killing it (log: {self.log.name})")
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                return
        if self.data_dir is not None:
            self.data_dir.cleanup()
        self.log.close()
        if keep_log:
            _say(f"the log of `taskstream dev` is in {self.log.name}")
        else:
            os.unlink(self.log.name)


# ------------------------------------------------------------- the run


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _at(value: datetime | None) -> float:
    """The timestamp of a time a finished task must have (when it started, when it finished)."""
    if value is None:
        raise BenchError("a finished task without its start or finish time")
    return value.timestamp()


def _check_outcome(task: Task) -> bool:
    """True if succeeded; raise if the task ended any other way."""
    if task.status == "succeeded":
        return True
    if task.status in NOT_SUCCEEDED_TERMINAL:
        raise BenchError(f"task {task.id} ended {task.status}: {task.error}")
    return False


def submit_all(url: str, count: int, clients: int, post_ms: list[float] | None = None,
               batch: int | None = None, grpc_target: str | None = None) -> dict[str, float]:
    """POST ``count`` noop tasks from ``clients`` threads; task id -> wall time just before its POST.

    ``post_ms``, if given, receives each POST's round trip in milliseconds. With ``batch``, each POST is
    a ``/tasks:batch`` of up to that many tasks.
    """
    shares = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]
    results: list[list[tuple[str, float]]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    abort = threading.Event()

    def worker(i: int) -> None:
        client: GrpcClient | Client
        if grpc_target is not None:  # --grpc: submit through taskstream.v1 (issue 17)
            from .bench_grpc import GrpcClient

            client = GrpcClient(grpc_target)
        else:
            client = Client(url)
        out = results[i]
        try:
            left = shares[i]
            while left > 0:
                if abort.is_set():
                    return
                n = min(batch, left) if batch else 1
                t = time.time()
                ids = client.submit_batch(n) if batch else [client.submit()]
                if post_ms is not None:
                    post_ms.append((time.time() - t) * 1000)
                out.extend((task_id, t) for task_id in ids)
                left -= n
        except BaseException as exc:
            errors.append(exc)
            abort.set()
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,), name=f"bench-client-{i}", daemon=True)
               for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        err = errors[0]
        raise err if isinstance(err, BenchError) else BenchError(f"submitting failed: {err!r}")
    return {task_id: t for out in results for task_id, t in out}


def wait_done(url: str, submitted: dict[str, float], *, sample: int = SAMPLE, progress: bool = True,
              stall_s: float = STALL_S) -> dict[str, Task]:
    """Wait until every submitted task succeeded; return id -> task.

    First polls a sample (evenly spaced in submission order, always including
    the last one) until all of it succeeded, then scans the succeeded list
    once, then fetches the remaining tasks one by one.
    """
    client = Client(url)
    order = list(submitted)  # insertion order = submission order within a client; good enough for sampling
    step = max(1, len(order) // sample)
    probe = list(dict.fromkeys([*order[step - 1::step], order[-1]]))
    done: dict[str, Task] = {}
    last_progress = time.monotonic()
    last_report = time.monotonic()
    try:
        while True:
            pending = [i for i in probe if i not in done]
            if not pending:
                break
            for task_id in pending:
                task = client.get_task(task_id)
                if _check_outcome(task):
                    done[task_id] = task
                    last_progress = time.monotonic()
            if progress and time.monotonic() - last_report > 2:
                _say(f"  ~{(len(probe) - len(pending)) * 100 // len(probe)}% done (of a sample of {len(probe)})")
                last_report = time.monotonic()
            if time.monotonic() - last_progress > stall_s:
                raise BenchError(f"no progress for {stall_s:.0f}s: {len(pending)} sampled tasks not succeeded "
                                 f"(e.g. {pending[0]}: {client.get_task(pending[0]).status})")
            time.sleep(POLL_S)

        oldest = min(submitted.values()) - 5.0  # created_at is the API's clock; allow for skew
        unfinished = set(submitted) - done.keys()
        if len(unfinished) > 2 * sample:
            done.update(scan_succeeded(client, unfinished, oldest))
        while True:
            missing = [i for i in submitted if i not in done]
            if not missing:
                return done
            progressed = False
            for task_id in missing:
                task = client.get_task(task_id)
                if _check_outcome(task):
                    done[task_id] = task
                    progressed = True
            if progressed:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > stall_s:
                statuses: dict[str, int] = {}
                for task_id in missing[:50]:
                    s = client.get_task(task_id).status
                    statuses[s] = statuses.get(s, 0) + 1
                raise BenchError(f"no progress for {stall_s:.0f}s: {len(missing)} tasks not succeeded "
                                 f"(statuses of some: {statuses}; e.g. {', '.join(missing[:5])})")
            time.sleep(POLL_S)
    finally:
        client.close()


def scan_succeeded(client: Client, wanted: Iterable[str], oldest: float) -> dict[str, Task]:
    """Page through succeeded tasks newest first until older than ``oldest``; the wanted ones found."""
    wanted = set(wanted)
    found: dict[str, Task] = {}
    with client._errors("GET /api/v1/tasks?status=succeeded"):
        for page in client.api.pages(status="succeeded", limit=PAGE):
            for task in page.items:
                if task.id in wanted:
                    wanted.discard(task.id)
                    found[task.id] = task
            if not wanted or not page.items or (_ts(page.items[-1].created_at) or 0) < oldest:
                break
    return found


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (0 < q <= 100)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


def figures(submitted: dict[str, float], tasks: dict[str, Task], submit_s: float, wall_s: float,
            post_ms: list[float]) -> dict:
    starts, finishes, finished = [], [], []
    for task_id, t0 in submitted.items():
        task = tasks[task_id]
        started, ended = _ts(task.started_at), _ts(task.finished_at)
        if ended is not None:
            finished.append(ended)
            finishes.append((ended - t0) * 1000)
        if started is not None:
            starts.append((started - t0) * 1000)
    n = len(submitted)
    e2e_s = max(finished) - min(submitted.values()) if finished else float("nan")
    return {
        "tasks": n,
        "submit_s": round(submit_s, 3),
        "submit_per_s": round(n / submit_s, 1) if submit_s > 0 else None,
        "post_ms": {f"p{q}": round(percentile(post_ms, q), 2) for q in (50, 99)} if post_ms else None,
        "e2e_s": round(e2e_s, 3),
        "throughput_per_s": round(n / e2e_s, 1) if e2e_s > 0 else None,
        "wall_s": round(wall_s, 3),
        "start_latency_ms": {f"p{q}": round(percentile(starts, q), 2) for q in (50, 95, 99)} if starts else None,
        "finish_latency_ms": {f"p{q}": round(percentile(finishes, q), 2) for q in (50, 99)} if finishes else None,
    }


def _table(result: dict) -> str:
    s, f, p = result["start_latency_ms"] or {}, result["finish_latency_ms"] or {}, result["post_ms"] or {}
    target = result["url"] + (f" (taskstream dev, {result['executors']} executor(s))" if result["started_dev"] else "")
    rows = [
        f"taskstream bench: {result['tasks']} noop tasks, {result['clients']} "
        f"{'gRPC' if result.get('via', 'http') != 'http' else 'HTTP'} clients, {target}",
        f"  submitted          {result['submit_s']:8.2f} s   {result['submit_per_s'] or 0:9.0f} tasks/s",
        f"  POST round trip ms p50 {p.get('p50', 0):8.1f}   p99 {p.get('p99', 0):8.1f}",
        f"  end to end         {result['e2e_s']:8.2f} s   {result['throughput_per_s'] or 0:9.0f} tasks/s"
        "   (first submit -> last finished_at)",
        f"  wall time          {result['wall_s']:8.2f} s",
        f"  submit->start  ms  p50 {s.get('p50', 0):8.1f}   p95 {s.get('p95', 0):8.1f}   p99 {s.get('p99', 0):8.1f}",
        f"  submit->finish ms  p50 {f.get('p50', 0):8.1f}   p99 {f.get('p99', 0):8.1f}",
    ]
    if result.get("prefill_events"):
        rows.insert(1, f"  log grown first by {result['prefill_events']:,} events ({result['prefill_tasks']:,} tasks, "
                       f"{result['prefill_s']:.0f} s)")
    return "\n".join(rows)


def run_chain(client: Client, n: int) -> dict:
    """A chain of ``n`` dependent no-op tasks in one workflow; per-hop latency from the tasks' own times.

    A hop is the end of one task (``finished_at``) to the start of the next
    (``started_at``): the processor folds the result, resolves the dependent
    across partitions by two events, queues it, and an executor picks it up.
    """
    tasks = [{"key": f"c{i}", "handler": "noop", "payload": {}} for i in range(n)]
    for i in range(1, n):
        tasks[i]["depends_on"] = [f"c{i - 1}"]
    t0 = time.time()
    with client._errors("POST /api/v1/workflows"):
        ids_by_key = client.api.workflow(tasks).task_ids
    submit_s = time.time() - t0
    ids = [ids_by_key[f"c{i}"] for i in range(n)]
    try:
        task = client.api.wait(ids[-1], timeout=STALL_S + n * 0.1)
    except WaitTimeout as exc:
        raise BenchError(f"the chain did not finish in time (last task {exc.task.status})") from None
    except TaskstreamError as exc:
        raise BenchError(str(exc)) from None
    if not task.succeeded:
        raise BenchError(f"the chain's last task ended {task.status}: {task.error}")
    done = [client.get_task(i) for i in ids]
    hops = [(_at(b.started_at) - _at(a.finished_at)) * 1000 for a, b in pairwise(done)]
    total_s = _at(done[-1].finished_at) - t0
    return {
        "chain": n,
        "submit_s": round(submit_s, 3),
        "total_s": round(total_s, 3),
        "per_hop_ms_mean": round(total_s * 1000 / n, 2),
        "hop_ms_p50": round(percentile(hops, 50), 2),
        "hop_ms_p99": round(percentile(hops, 99), 2),
    }


@contextlib.contextmanager
def _stack(url: str | None, executors: int):
    """Yield ``(url, dev)`` of a ready API: the one given, or a `taskstream dev` started here.

    A dev stack started here is stopped on the way out; its log is kept when
    the block did not finish.
    """
    dev = None
    finished = False
    try:
        if url is None:
            dev = DevStack(executors).start()
            url = dev.url
            _say(f"started `taskstream dev` on {url} with {executors} executor(s); waiting until it is ready ...")
        url = url.rstrip("/")
        wait_ready(url, READY_TIMEOUT_S if dev else URL_READY_TIMEOUT_S, dev)
        yield url, dev
        finished = True
    finally:
        if dev is not None:
            _say("stopping `taskstream dev` ...")
            dev.stop(keep_log=not finished)


def run_chain_bench(n: int, url: str | None, executors: int, as_json: bool) -> int:
    """`taskstream bench --chain N`: returns the exit code."""
    try:
        with _stack(url, executors) as (url, dev):
            warm = submit_all(url, 10, 1)
            _wait_with_deadline(url, warm, WARMUP_TIMEOUT_S, dev)
            _say(f"submitting a chain of {n} dependent noop tasks ...")
            client = Client(url)
            try:
                result = run_chain(client, n)
            finally:
                client.close()
    except BenchError as exc:
        _say(f"error: {exc}")
        return 1
    if as_json:
        print(json.dumps(result))
    else:
        print("\n".join(f"  {k:18} {v}" for k, v in result.items()))
    return 0


#: Events a no-op task leaves in the log (TaskCreated, TaskQueued, TaskSucceeded): --prefill-events / this = tasks.
EVENTS_PER_TASK = 3
PREFILL_BATCH = 1000


def prefill(url: str, events: int, clients: int = 2) -> dict:
    """Grow the log by about ``events`` events the way users do: no-op tasks through ``POST /tasks:batch``,
    waited for until every one succeeded. Returns what it wrote and how long it took."""
    tasks = -(-events // EVENTS_PER_TASK)
    _say(f"prefilling the log with {tasks:,} no-op tasks (~{tasks * EVENTS_PER_TASK:,} events) ...")
    t0 = time.monotonic()
    submit_all(url, tasks, min(clients, tasks), batch=PREFILL_BATCH)
    _say(f"submitted in {time.monotonic() - t0:.0f}s; waiting until none is left waiting or running ...")
    _wait_drained(url)
    took = time.monotonic() - t0
    _say(f"prefilled in {took:.0f}s ({tasks / took:,.0f} tasks/s)")
    return {"prefill_tasks": tasks, "prefill_events": tasks * EVENTS_PER_TASK, "prefill_s": round(took, 1)}


#: The prefill waits for a drained stack by /stats counts (a sample of tasks tells nothing behind a deep backlog).
UNFINISHED = ("pending", "scheduled", "queued", "running")
DRAIN_STALL_S = 120.0


def _wait_drained(url: str) -> None:
    """Until /stats counts no task waiting or running; ``BenchError`` if nothing finishes for ``DRAIN_STALL_S``."""
    client = Client(url)
    last_done, last_change, last_said = -1, time.monotonic(), 0.0
    try:
        while True:
            with client._errors("GET /api/v1/stats"):
                by_status = client.api.stats()["tasks"]["by_status"]
            left = sum(by_status.get(s, 0) for s in UNFINISHED)
            done = sum(n for s, n in by_status.items() if s not in UNFINISHED)
            if left == 0:
                return
            now = time.monotonic()
            if done != last_done:
                last_done, last_change = done, now
            elif now - last_change > DRAIN_STALL_S:
                raise BenchError(
                    f"prefill: no task finished for {DRAIN_STALL_S:.0f}s ({left:,} still waiting or running)")
            if now - last_said > 30:
                _say(f"  {done:,} finished, {left:,} waiting or running")
                last_said = now
            time.sleep(1.0)
    finally:
        client.close()


def run_bench(count: int, url: str | None, clients: int, executors: int, as_json: bool,
              batch: int | None = None, prefill_events: int = 0, grpc_target: str | None = None) -> int:
    """Entry point of `taskstream bench`; returns the exit code."""
    if count < 1 or clients < 1 or executors < 1:
        _say("error: -n, --clients and --executors must be at least 1")
        return 2
    if grpc_target is not None and url is None:
        _say("error: --grpc needs --url (the API whose gRPC port it names): the wait for the tasks is over HTTP")
        return 2
    clients = min(clients, count)
    grown: dict = {}
    try:
        with _stack(url, executors) as (url, dev):
            if prefill_events > 0:
                grown = prefill(url, prefill_events)
            _say(f"warming up with {WARMUP} tasks ...")
            warm = submit_all(url, WARMUP, 1)
            _wait_with_deadline(url, warm, WARMUP_TIMEOUT_S, dev)

            how = f" in batches of {batch}" if batch else ""
            _say(f"submitting {count} noop tasks with {clients} clients{how} ...")
            post_ms: list[float] = []
            t0 = time.monotonic()
            submitted = submit_all(url, count, clients, post_ms, batch, grpc_target)
            submit_s = time.monotonic() - t0
            _say(f"submitted in {submit_s:.2f}s; waiting until they succeed ...")
            tasks = wait_done(url, submitted)
            wall_s = time.monotonic() - t0
    except BenchError as exc:
        _say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        _say("interrupted")
        return 130

    result = {
        "url": url,
        "started_dev": dev is not None,
        "clients": clients,
        "batch": batch,
        "via": f"grpc {grpc_target}" if grpc_target is not None else "http",
        "executors": executors if dev is not None else None,
        **grown,
        **figures(submitted, tasks, submit_s, wall_s, post_ms),
    }
    if as_json:
        print(json.dumps(result))
    else:
        print(_table(result))
    return 0


def _wait_with_deadline(url: str, submitted: dict[str, float], timeout: float, dev: DevStack | None) -> None:
    """Warm-up: every task succeeded within ``timeout`` (the executors' group join takes a few seconds)."""
    client = Client(url)
    deadline = time.monotonic() + timeout
    pending = list(submitted)
    try:
        while pending:
            if dev is not None:
                dev.check_alive()
            pending = [i for i in pending if not _check_outcome(client.get_task(i))]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"warm-up: {len(pending)} of {len(submitted)} tasks not succeeded after "
                                 f"{timeout:.0f}s (is a processor and an executor running?)")
            time.sleep(POLL_S)
    finally:
        client.close()


# ------------------------------------------------------------------ --rebuild

REBUILD_PARTITIONS = 6


def synthetic_log(n: int, start: datetime | None = None):
    """At least ``n`` events of a realistic mix, in the order the processor would append them.

    Per task: 60 % run once (TaskCreated, TaskQueued, TaskSucceeded), 10 %
    also report TaskStarted, 15 % fail once and succeed on the retry
    (TaskFailed, TaskRetryScheduled, TaskQueued with due_at, TaskSucceeded),
    5 % fail for good (permanent TaskFailed, TaskDeadLettered), 10 % wait
    for the previous task (DependencyRegistered keyed by the upstream,
    DependencyResolved, then queued and run). One new task id per task.
    """
    from datetime import UTC, timedelta

    from taskstream.schemas import (
        DependencyRegistered,
        DependencyResolved,
        TaskCreated,
        TaskDeadLettered,
        TaskFailed,
        TaskQueued,
        TaskRetryScheduled,
        TaskStarted,
        TaskSucceeded,
    )

    t = start or datetime(2026, 1, 1, tzinfo=UTC)
    ms = timedelta(milliseconds=1)
    produced = 0
    i = 0
    prev = None
    while produced < n:
        i += 1
        tid = f"{i:032x}"
        kind = i % 20
        t += ms
        p = "processor-bench"
        if kind in (18, 19) and prev is not None:  # 10 %: a dependent of the previous task
            out = [
                TaskCreated(task_id=tid, occurred_at=t, producer="api-bench", handler="noop", payload='{"n": 1}',
                            depends_on=[prev], max_attempts=3, labels={"bench": "rebuild"}),
                DependencyRegistered(task_id=prev, occurred_at=t, producer=p, dependent=tid),
                DependencyResolved(task_id=tid, occurred_at=t + ms, producer=p, upstream=prev, outcome="succeeded",
                                   result='{"ok": true}'),
                TaskQueued(task_id=tid, occurred_at=t + ms, producer=p, attempt=1, priority="medium"),
                TaskSucceeded(task_id=tid, occurred_at=t + 3 * ms, producer="executor-bench", attempt=1,
                              result='{"ok": true}', started_at=t + 2 * ms),
            ]
        else:
            pr = "high" if kind % 3 == 0 else "medium"
            out = [
                TaskCreated(task_id=tid, occurred_at=t, producer="api-bench", handler="noop", payload='{"n": 1}',
                            max_attempts=3, priority=pr),
                TaskQueued(task_id=tid, occurred_at=t, producer=p, attempt=1, priority=pr),
            ]
            if kind in (15, 16, 17):  # 15 %: fails once, succeeds on the retry
                nb = t + 1000 * ms
                out += [
                    TaskFailed(task_id=tid, occurred_at=t + 2 * ms, producer="executor-bench", attempt=1,
                               error="TimeoutError: upstream slow", started_at=t + ms),
                    TaskRetryScheduled(task_id=tid, occurred_at=t + 2 * ms, producer=p, attempt=1, not_before=nb,
                                       delay_s=1.0, priority=pr, error="TimeoutError: upstream slow"),
                    TaskQueued(task_id=tid, occurred_at=nb, producer="relay-bench", attempt=2, priority=pr, due_at=nb),
                    TaskSucceeded(task_id=tid, occurred_at=nb + 2 * ms, producer="executor-bench", attempt=2,
                                  result='{"ok": true}', started_at=nb + ms),
                ]
            elif kind == 14:  # 5 %: fails for good
                out += [
                    TaskFailed(task_id=tid, occurred_at=t + 2 * ms, producer="executor-bench", attempt=1,
                               error="ValueError: bad input", permanent=True, started_at=t + ms),
                    TaskDeadLettered(task_id=tid, occurred_at=t + 2 * ms, producer=p, attempt=1,
                                     error="ValueError: bad input", handler="noop", priority=pr),
                ]
            elif kind in (12, 13):  # 10 %: long enough to report TaskStarted
                out += [
                    TaskStarted(task_id=tid, occurred_at=t + ms, producer="executor-bench", attempt=1),
                    TaskSucceeded(task_id=tid, occurred_at=t + 3 * ms, producer="executor-bench", attempt=1,
                                  result='{"ok": true}', started_at=t + ms),
                ]
            else:
                out.append(TaskSucceeded(task_id=tid, occurred_at=t + 2 * ms, producer="executor-bench", attempt=1,
                                         result='{"ok": true}', started_at=t + ms))
        prev = tid
        produced += len(out)
        yield from out


def write_log(settings, n: int, progress=None) -> int:
    """Append ``synthetic_log(n)`` to ``<p>.events`` in big batches; the number of events written."""
    from taskstream.schemas import Topics, codec
    from taskstream.schemas.kafka import producer as kafka_producer

    topic = Topics(settings.prefix).events
    producer = kafka_producer(settings, "taskstream-bench-log", {"batch.num.messages": 10000, "linger.ms": 20,
                                                                 "queue.buffering.max.messages": 500000})
    failed: list = []

    def done(err, msg):
        if err is not None:
            failed.append(err)

    written = 0
    encode, headers = codec.WireFormat.of(settings).encode, codec.headers
    for e in synthetic_log(n):
        value = encode(e)
        while True:
            try:
                producer.produce(topic, value, e.task_id.encode(), headers=headers(e), on_delivery=done)
                break
            except BufferError:
                producer.poll(0.01)
        written += 1
        if written % 10000 == 0:
            producer.poll(0)
            if progress is not None:
                progress(10000)
    if failed or producer.flush(120):
        raise BenchError(f"writing the log failed: {failed[:3]}")
    return written


def run_rebuild_bench(events: int, as_json: bool, workers: int | None = None, profile: str | None = None) -> int:
    """`taskstream bench --rebuild`: events folded per second by `state rebuild` over a synthetic log."""
    import logging
    import uuid

    from taskstream.schemas import Settings, catalogue
    from taskstream.schemas.kafka import LIBRDKAFKA_LOG, ensure_topics, wait_for_broker
    from taskstream.streams.rebuild import RebuildError, rebuild

    from .broker import KafkaBroker, free_port

    LIBRDKAFKA_LOG.setLevel(logging.CRITICAL)
    own = None
    try:
        base = Settings()
        if "TASKSTREAM_BOOTSTRAP_SERVERS" not in os.environ:
            own = KafkaBroker(free_port(), tempfile.mkdtemp(prefix="taskstream-bench-kafka-"))
            own.start(say=_say)
            _say(f"started a Kafka node on {own.bootstrap_servers}")
        settings = Settings(**{**base.model_dump(), "prefix": f"bench-rebuild-{uuid.uuid4().hex[:8]}",
                               "partitions": REBUILD_PARTITIONS,
                               **({"bootstrap_servers": own.bootstrap_servers} if own else {})})
        wait_for_broker(settings, timeout=15)
        ensure_topics(settings, catalogue(settings))
        _say(f"writing {events} events to {settings.prefix}.events ...")
        t0 = time.monotonic()
        written = write_log(settings, events)
        write_s = time.monotonic() - t0
        _say(f"wrote {written} events in {write_s:.1f}s; rebuilding ...")
        if profile:  # cProfile sees this process only: fold in it
            import cProfile

            workers = 1

            prof = cProfile.Profile()
            prof.enable()
        report = rebuild(settings, workers=workers)
        if profile:
            prof.disable()
            prof.dump_stats(profile)
            _say(f"profile written to {profile} (python -m pstats {profile})")
        if report.events != written:
            raise BenchError(f"the rebuild folded {report.events} events, {written} were written")
    except (BenchError, RebuildError) as exc:
        _say(f"error: {exc}")
        return 1
    except Exception as exc:  # the broker binary missing, a port taken ...
        _say(f"error: {type(exc).__name__}: {exc}")
        return 1
    finally:
        if own is not None:
            own.stop()
            shutil.rmtree(own.data_dir, ignore_errors=True)
    result = {"events": report.events, "tasks": report.tasks, "partitions": report.partitions,
              "workers": report.workers, "rebuild_s": round(report.seconds, 2),
              "events_per_s": round(report.rate), "fold_cpu_s": round(report.cpu_s, 2),
              "events_per_cpu_s": round(report.cpu_rate), "write_s": round(write_s, 2),
              "load_avg_1m": round(os.getloadavg()[0], 2)}
    if as_json:
        print(json.dumps(result))
    else:
        print("\n".join(f"  {k:14} {v}" for k, v in result.items()))
    return 0

