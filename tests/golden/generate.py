"""Make the golden event logs of ``tests/golden/v<N>/`` (run by hand, never by the tests).

Each released schema version N gets a few realistic task histories, encoded
as single-object Avro with the writer schemas of release N
(``schemas/avro/history/<Name>.v<M>.avsc``, the highest M <= N), and the
TaskState each task folded to *with the code of release N*:

    # 1. encode the logs with the old writer schemas (today's checkout, no old code needed)
    .venv/bin/python tests/golden/generate.py encode 1
    # 2. fold them with the code of that release: an export of its commit
    #    laid out as the ``taskstream`` package, first on PYTHONPATH
    .venv/bin/python tests/golden/generate.py checkout 3a9e7d8 /tmp/golden-v1
    PYTHONPATH=/tmp/golden-v1 .venv/bin/python tests/golden/generate.py states 1

Releases: 1 = commit 3a9e7d8 (before issue 5), 2 = commit a788324 (issue 5:
retries in scheduled, dead letters, checkpoints, redrives), 3 = TaskCreated
``description`` (commit 8f6366c, folded by the code of that checkout), 4 =
``actor`` on the events the API writes (issue 15's audit field; folded by
the code of the commit that added it), 5 = issue 23: ``TaskFailed.retry_delay_s``
(a handler's ``Retry(delay_s=...)``) and ``schedule_id`` on schedule events
(schedules became an aggregate of their own); folded by the code of issue 23,
6 = issue 26: ``TaskFailed.error_type`` and ``traceback`` (a failure shows why;
the TaskState keeps them beside ``error``), folded by the code of that change.
7 = issue 28: concurrency keys (TaskCreated/TaskState ``concurrency_*``,
``waiting_for``; SlotRequested, SlotGranted, SlotReleased and the gate's
GateState); its ``concurrency`` history is folded by the code of issue 28.
8 = issue 28's rate limits (TaskCreated/TaskState ``concurrency_rate`` and
``concurrency_per_s``; SlotRequested ``rate``/``per_s``; GateState ``rate``,
``per_s``, ``spent``; GateWoken); its ``rate_limits`` history is folded by
the code of that change.
8 = issue 28: pause and resume (ControlPaused, ControlResumed, ControlState,
TaskHeld, TaskReleased); its ``pause`` history is folded by the code of that change.
9 = issue 28's handler rates (ControlLimited/ControlState ``rate`` and ``per_s``; TaskHeld
``concurrency_rate`` and ``concurrency_per_s``); its ``handler_rates`` history is folded by the code of
that change.
9 also holds issue 29: the W3C trace context of a task (TaskCreated/TaskState ``traceparent`` and ``tracestate``);
its ``tracing`` history (a two-task workflow, one retry) is folded by the code of that change.
9 also holds issue 29's topic triggers (TriggerCreated, TriggerPaused, TriggerResumed,
TriggerDeleted, TriggerState); its ``triggers`` history is folded by the code of that change.
A release's logs are never regenerated once committed: they are what that
release wrote. ``encode`` for a new release only, or for a history a release
lacked, by name (``encode 4 schedule``, then ``states 4 schedule`` with that
release's code: v4's schedule log was added with issue 23 and folded by the
code before it).

File format (``v<N>/<history>.json``): ``records`` in log order, each with
its Kafka ``key`` (the task id the event is keyed by), ``event_type`` (the
header) and ``value`` (hex of the record bytes); ``states``: task id ->
the folded TaskState as JSON (datetimes in ISO 8601).
"""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
HISTORY = REPO / "schemas" / "avro" / "history"
RELEASES = {1: "3a9e7d8", 2: "a788324", 3: "8f6366c", 4: "actor (issue 15)",
            5: "retry_delay_s and schedule_id (issue 23)",
            6: "error_type and traceback (issue 26); schedule pause, resume, run now, backfill (issues 26, 29)",
            7: "concurrency keys (issue 28)",
            8: "rate limits of a concurrency key; pause and resume, handler limits (issue 28)",
            9: "handler rates (issue 28); trace context of a task, topic triggers (issue 29)"}
T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# ------------------------------------------------------------- histories


def histories(version: int) -> dict[str, list[tuple[str, dict]]]:
    """``name -> [(record name, fields)]`` as release ``version``'s processor and executors wrote them."""
    v2 = version >= 2
    n = 0

    def ev(kind: str, task_id: str, t: float, **fields) -> tuple[str, dict]:
        nonlocal n
        n += 1
        producer = (
            "api-golden"
            if kind in ("TaskCreated", "TaskCancelled", "TaskUpdated", "TaskRedriven")
            else (
                "executor-golden"
                if kind in ("TaskStarted", "TaskSucceeded", "TaskFailed", "TaskCheckpointed")
                else "processor"
            )
        )
        if version >= 4 and producer == "api-golden":
            fields = {"actor": "key-golden", **fields}  # v4: who asked, on every event the API writes
        return kind, {"event_id": f"{n:032x}", "task_id": task_id, "occurred_at": at(t), "producer": producer, **fields}

    def created(task_id: str, t: float, **fields) -> tuple[str, dict]:
        base = {"handler": "echo", "priority": "medium", "payload": '{"n": 1}'}
        if version >= 3:
            base["description"] = f"golden task {task_id}"
        return ev("TaskCreated", task_id, t, **{**base, **fields})

    def retry(task_id: str, attempt: int, t: float, delay: float, priority: str = "medium") -> list:
        """What follows a failed attempt that has attempts left: v1 queues at once, v2 waits in the relay."""
        if not v2:
            return [ev("TaskQueued", task_id, t, attempt=attempt + 1, priority=priority)]
        return [
            ev("TaskRetryScheduled", task_id, t, attempt=attempt, not_before=at(t + delay), delay_s=delay,
               priority=priority, error="ValueError: boom"),
            ev("TaskQueued", task_id, t + delay, attempt=attempt + 1, priority=priority, due_at=at(t + delay)),
        ]

    def why(error_type: str, where: str, message: str) -> dict:
        """v6: the exception type and the handler's frames of a failure the handler raised."""
        if version < 6:
            return {}
        tb = ("Traceback (most recent call last):\n"
              '  File "/srv/handlers/echo.py", line 12, in echo\n    return load(payload)\n'
              f'  File "/srv/handlers/echo.py", line 30, in {where}\n    raise {error_type.rsplit(".", 1)[-1]}(...)\n'
              f"{error_type}: {message}")
        return {"error_type": error_type, "traceback": tb}

    logs: dict[str, list] = {}
    logs["succeeded"] = [
        created("t-ok", 0, priority="high", name="resize", labels={"team": "media"}, timeout_s=30.0),
        ev("TaskQueued", "t-ok", 0.01, attempt=1, priority="high"),
        ev("TaskStarted", "t-ok", 0.5, attempt=1),
        ev("TaskSucceeded", "t-ok", 1.5, attempt=1, result='{"ok": true}', started_at=at(0.5)),
    ]
    logs["retries"] = [
        created("t-retry", 0, max_attempts=3, **({"backoff_initial_s": 2.0, "backoff_multiplier": 2.0} if v2 else {})),
        ev("TaskQueued", "t-retry", 0.01, attempt=1, priority="medium"),
        ev("TaskStarted", "t-retry", 0.1, attempt=1),
        ev("TaskFailed", "t-retry", 1.1, attempt=1, error="ValueError: boom", started_at=at(0.1),
           **({"retry_delay_s": 2.0} if version >= 5 else {}),  # v5: the handler asked for the wait
           **why("ValueError", "load", "boom")),
        *retry("t-retry", 1, 1.11, 2.0),
        ev("TaskFailed", "t-retry", 3.5, attempt=2, error="ValueError: boom again",
           **why("ValueError", "load", "boom again")),
        *retry("t-retry", 2, 3.51, 4.0),
        ev("TaskSucceeded", "t-retry", 8.0, attempt=3, result='{"tries": 3}'),
        created("t-perm", 10, max_attempts=3, payload='{"bad": true}'),
        ev("TaskQueued", "t-perm", 10.01, attempt=1, priority="medium"),
        ev("TaskFailed", "t-perm", 10.2, attempt=1, error="PermanentError: bad payload", permanent=True,
           **why("taskstream.executors.errors.PermanentError", "check", "bad payload")),
        *([ev("TaskDeadLettered", "t-perm", 10.21, attempt=1, error="PermanentError: bad payload", handler="echo",
              priority="medium")] if v2 else []),
    ]
    wf = {"workflow_id": "wf-golden"}
    logs["dependencies"] = [
        created("t-b", 0, depends_on=["t-a"], upstream_keys={"t-a": "a"}, key="b", **wf),
        created("t-a", 0, key="a", **wf),
        ev("DependencyRegistered", "t-a", 0.01, dependent="t-b"),
        ev("TaskQueued", "t-a", 0.01, attempt=1, priority="medium"),
        ev("TaskSucceeded", "t-a", 0.3, attempt=1, result='{"rows": 42}'),
        ev("DependencyResolved", "t-b", 0.31, upstream="t-a", outcome="succeeded", result='{"rows": 42}'),
        ev("TaskQueued", "t-b", 0.31, attempt=1, priority="medium"),
        ev("TaskSucceeded", "t-b", 0.6, attempt=1, result="null"),
        created("t-d", 1, depends_on=["t-c"], upstream_keys={"t-c": "c"}, key="d", **wf),
        created("t-c", 1, key="c", **wf),
        ev("DependencyRegistered", "t-c", 1.01, dependent="t-d"),
        ev("TaskQueued", "t-c", 1.01, attempt=1, priority="medium"),
        ev("TaskFailed", "t-c", 1.2, attempt=1, error="PermanentError: no input", permanent=True),
        *([ev("TaskDeadLettered", "t-c", 1.21, attempt=1, error="PermanentError: no input", handler="echo",
              priority="medium")] if v2 else []),
        ev("DependencyResolved", "t-d", 1.21, upstream="t-c", outcome="failed"),
    ]
    logs["cancel"] = [
        created("t-later", 0, run_at=at(3600), priority="low"),
        ev("TaskUpdated", "t-later", 5, expected_version=1, priority="high", payload='{"n": 2}'),
        ev("TaskCancelled", "t-later", 10, reason="no longer needed"),
        created("t-run", 20),
        ev("TaskQueued", "t-run", 20.01, attempt=1, priority="medium"),
        ev("TaskStarted", "t-run", 20.5, attempt=1),
        ev("TaskCancelled", "t-run", 21),
        ev("TaskFailed", "t-run", 21.5, attempt=1, error="Cancelled"),  # the executor's late answer changes nothing
    ]
    if v2:
        logs["lease_redrive"] = [
            created("t-lease", 0, max_attempts=2, timeout_s=60.0),
            ev("TaskQueued", "t-lease", 0.01, attempt=1, priority="medium"),
            ev("TaskStarted", "t-lease", 0.2, attempt=1),
            ev("TaskCheckpointed", "t-lease", 1, attempt=1, data='{"page": 7}'),
            ev("LeaseExpired", "t-lease", 31, attempt=1, lease_s=30.0),
            *retry("t-lease", 1, 31.01, 1.0),
            ev("TaskFailed", "t-lease", 33, attempt=2, error="PermanentError: page 8 missing", permanent=True),
            ev("TaskDeadLettered", "t-lease", 33.01, attempt=2, error="PermanentError: page 8 missing",
               handler="echo", priority="medium"),
            ev("TaskRedriven", "t-lease", 100, reason="page 8 restored"),
            ev("TaskQueued", "t-lease", 100.01, attempt=3, priority="medium", due_at=at(100)),
            ev("TaskSucceeded", "t-lease", 101, attempt=3, result='{"pages": 9}'),
        ]
    if v2:
        # A cron schedule (schemas of set 4 and before carry its id in task_id only; set 5 adds schedule_id).
        sid = "s-hourly"

        def sched(kind: str, t: float, **fields) -> tuple[str, dict]:
            kind, record = ev(kind, sid, t, **fields)
            if kind != "ScheduleFired":  # written by the API
                record["producer"] = "api-golden"
                if version >= 4:
                    record = {"actor": "key-golden", **record}
            if version >= 5:
                record["schedule_id"] = sid
            return kind, record

        def by_processor(e: tuple[str, dict]) -> tuple[str, dict]:
            kind, record = e
            return kind, {**{k: v for k, v in record.items() if k != "actor"}, "producer": "processor"}

        template = json.dumps({"handler": "echo", "payload": {"n": 1}, "priority": "low", "max_attempts": 2})
        logs["schedule"] = [
            sched("ScheduleCreated", 0, cron="0 * * * *", timezone="Europe/Paris", template=template, name="hourly",
                  misfire="skip"),
            sched("ScheduleFired", 3600, fire_at=at(3600), created_task_id="t-s1"),
            by_processor(created("t-s1", 3600.01, priority="low", max_attempts=2, payload='{"n": 1}', name="hourly",
                                 schedule_id=sid, scheduled_for=at(3600))),
            ev("TaskQueued", "t-s1", 3600.02, attempt=1, priority="low"),
            ev("TaskSucceeded", "t-s1", 3601, attempt=1, result="null"),
            sched("ScheduleFired", 4 * 3600 + 10, fire_at=at(3 * 3600), created_task_id="", skipped=2),
            sched("ScheduleDeleted", 5 * 3600, reason="no longer needed"),
        ]
    if version >= 7:
        # Two tasks of one concurrency key, limit 1: the second waits for the first's slot, then is cancelled.
        gate = "concurrency:acme"

        def slot(kind: str, t: float, **fields) -> tuple[str, dict]:
            return ev(kind, gate, t, gate_id=gate, **fields)

        keyed = {"concurrency_key": "acme", "concurrency_limit": 1}
        logs["concurrency"] = [
            created("t-k1", 0, **keyed),
            ev("TaskQueued", "t-k1", 0.01, attempt=1, priority="medium"),
            slot("SlotRequested", 0.01, holder="t-k1", attempt=1, priority="medium", limit=1),
            created("t-k2", 0.1, **keyed),
            ev("TaskQueued", "t-k2", 0.11, attempt=1, priority="medium"),
            slot("SlotRequested", 0.11, holder="t-k2", attempt=1, priority="medium", limit=1),
            ev("SlotGranted", "t-k1", 0.02, gate_id=gate, attempt=1),
            ev("TaskStarted", "t-k1", 0.2, attempt=1),
            ev("TaskSucceeded", "t-k1", 0.5, attempt=1, result="null"),
            slot("SlotReleased", 0.51, holder="t-k1", attempt=1),
            ev("SlotGranted", "t-k2", 0.52, gate_id=gate, attempt=1),
            ev("TaskCancelled", "t-k2", 0.6, reason="no longer needed"),
            slot("SlotReleased", 0.61, holder="t-k2", attempt=1),
        ]
    if version >= 8:
        # A handler paused in partition 0: a task created there is held, then released by the resume and runs.
        ctl, paused = "control:0:handler:echo", "paused:handler:echo"

        def control(kind: str, t: float, **fields) -> tuple[str, dict]:
            return ev(kind, ctl, t, control_id=ctl, target="handler:echo", partition=0, producer="api-golden",
                      actor="key-golden", **fields)

        first = created("t-p1", 0.1)
        logs["pause"] = [
            control("ControlPaused", 0, reason="deploy"),
            first,
            ev("TaskHeld", "t-p1", 0.11, attempt=1, waiting_for=paused, version=1, cause=first[1]["event_id"]),
            control("ControlResumed", 5),
            ev("TaskReleased", "t-p1", 5.01, attempt=1, waiting_for=paused),
            ev("TaskStarted", "t-p1", 5.2, attempt=1),
            ev("TaskSucceeded", "t-p1", 5.5, attempt=1, result="null"),
        ]
        # Two tasks of one key with a rate of 1 per second, no limit: the second waits for the gate's timer.
        gate = "concurrency:api"

        def gate_ev(kind: str, t: float, **fields) -> tuple[str, dict]:
            return ev(kind, gate, t, gate_id=gate, **fields)

        rated = {"concurrency_key": "api", "concurrency_rate": 1, "concurrency_per_s": 1.0}
        asked = {"priority": "medium", "limit": 0, "rate": 1, "per_s": 1.0}
        logs["rate_limits"] = [
            created("t-r1", 0, **rated),
            ev("TaskQueued", "t-r1", 0.01, attempt=1, priority="medium"),
            gate_ev("SlotRequested", 0.01, holder="t-r1", attempt=1, **asked),
            created("t-r2", 0.1, **rated),
            ev("TaskQueued", "t-r2", 0.11, attempt=1, priority="medium"),
            gate_ev("SlotRequested", 0.11, holder="t-r2", attempt=1, **asked),
            ev("SlotGranted", "t-r1", 0.02, gate_id=gate, attempt=1),
            ev("TaskStarted", "t-r1", 0.2, attempt=1),
            ev("TaskSucceeded", "t-r1", 0.5, attempt=1, result="null"),
            gate_ev("SlotReleased", 0.51, holder="t-r1", attempt=1),
            gate_ev("GateWoken", 1.011),
            ev("SlotGranted", "t-r2", 1.02, gate_id=gate, attempt=1),
            ev("TaskStarted", "t-r2", 1.1, attempt=1),
            ev("TaskSucceeded", "t-r2", 1.3, attempt=1, result="null"),
            gate_ev("SlotReleased", 1.31, holder="t-r2", attempt=1),
        ]
    if version >= 9:
        # A handler with a rate of 1 per second and no limit: its tasks are held into the handler's gate (the hold
        # carries the rate), the first starts at once, the second when the gate's timer brings the start back.
        hctl, hgate = "control:0:handler:mail", "concurrency:handler:mail"
        rate = {"concurrency_rate": 1, "concurrency_per_s": 1.0}
        asked = {"priority": "medium", "limit": 0, "rate": 1, "per_s": 1.0}

        def hgate_ev(kind: str, t: float, **fields) -> tuple[str, dict]:
            return ev(kind, hgate, t, gate_id=hgate, **fields)

        h1, h2 = created("t-h1", 0.1, handler="mail"), created("t-h2", 0.2, handler="mail")
        logs["handler_rates"] = [
            ev("ControlLimited", hctl, 0, control_id=hctl, target="handler:mail", partition=0,
               producer="api-golden", actor="key-golden", limit=None, rate=1, per_s=1.0),
            h1,
            ev("TaskHeld", "t-h1", 0.11, attempt=1, waiting_for=hgate, version=1, cause=h1[1]["event_id"], **rate),
            hgate_ev("SlotRequested", 0.11, holder="t-h1", attempt=1, **asked),
            h2,
            ev("TaskHeld", "t-h2", 0.21, attempt=1, waiting_for=hgate, version=1, cause=h2[1]["event_id"], **rate),
            hgate_ev("SlotRequested", 0.21, holder="t-h2", attempt=1, **asked),
            ev("SlotGranted", "t-h1", 0.12, gate_id=hgate, attempt=1),
            ev("TaskStarted", "t-h1", 0.2, attempt=1),
            ev("TaskSucceeded", "t-h1", 0.4, attempt=1, result="null"),
            hgate_ev("SlotReleased", 0.41, holder="t-h1", attempt=1),
            hgate_ev("GateWoken", 1.111),
            ev("SlotGranted", "t-h2", 1.12, gate_id=hgate, attempt=1),
            ev("TaskStarted", "t-h2", 1.2, attempt=1),
            ev("TaskSucceeded", "t-h2", 1.3, attempt=1, result="null"),
            hgate_ev("SlotReleased", 1.31, holder="t-h2", attempt=1),
        ]
        # A workflow of two tasks in one trace (each TaskCreated carries its submit span's traceparent); the
        # upstream fails once and is retried, then the dependent runs.
        trace = "4bf92f3577b34da6a3ce929d0e0e4736"
        wf9 = {"workflow_id": "wf-trace", "tracestate": "vendor=golden"}
        logs["tracing"] = [
            created("t-t1", 0, key="a", max_attempts=2, traceparent=f"00-{trace}-00f067aa0ba902b7-01", **wf9),
            created("t-t2", 0, key="b", depends_on=["t-t1"], upstream_keys={"t-t1": "a"},
                    traceparent=f"00-{trace}-00f067aa0ba902b8-01", **wf9),
            ev("DependencyRegistered", "t-t1", 0.01, dependent="t-t2"),
            ev("TaskQueued", "t-t1", 0.02, attempt=1, priority="medium"),
            ev("TaskFailed", "t-t1", 0.5, attempt=1, error="ValueError: boom", started_at=at(0.1),
               **why("ValueError", "load", "boom")),
            *retry("t-t1", 1, 0.51, 1.0),
            ev("TaskSucceeded", "t-t1", 2.0, attempt=2, result='{"ok": true}', started_at=at(1.6)),
            ev("DependencyResolved", "t-t2", 2.01, upstream="t-t1", outcome="succeeded", result='{"ok": true}'),
            ev("TaskQueued", "t-t2", 2.02, attempt=1, priority="medium"),
            ev("TaskSucceeded", "t-t2", 2.5, attempt=1, result="null", started_at=at(2.1)),
        ]
        # A topic trigger created with a filter and a password (kept in the log, never shown), paused, resumed,
        # deleted; the task its record 0:41 made carries the record's place in its labels.
        trg = "trigger:orders"

        def trigger(kind: str, t: float, **fields) -> tuple[str, dict]:
            return ev(kind, trg, t, trigger_id=trg, producer="api-golden", actor="key-golden", **fields)

        logs["triggers"] = [
            trigger("TriggerCreated", 0, name="orders", topic="shop.orders",
                    template='{"handler": "echo", "priority": "high", "max_attempts": 3}',
                    filter='{"type": "order"}', start='"earliest"', bootstrap_servers="other:9092",
                    security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="taskstream",
                    sasl_password="golden-secret"),
            created("t-trg", 0.5, priority="high", max_attempts=3, payload='{"type":"order","id":7}',
                    labels={"taskstream.trigger": "orders", "kafka.topic": "shop.orders", "kafka.partition": "0",
                            "kafka.offset": "41", "kafka.key": "o-7"}, producer="trigger-runner-golden"),
            trigger("TriggerPaused", 1, reason="maintenance"),
            trigger("TriggerResumed", 2),
            trigger("TriggerDeleted", 3, reason="done"),
        ]
    return logs


# ------------------------------------------------------------- encoding


def writer_schema(name: str, version: int) -> dict:
    versions = sorted(int(p.name.split(".v")[1].split(".")[0]) for p in HISTORY.glob(f"{name}.v*.avsc"))
    usable = [v for v in versions if v <= version]
    if not usable:
        raise SystemExit(f"{name} does not exist in release {version}")
    return json.loads((HISTORY / f"{name}.v{usable[-1]}.avsc").read_text())


def encode_record(schema: dict, fields: dict) -> bytes:
    """Single-object Avro with ``schema`` as the writer, written here without the codec (it is today's)."""
    import fastavro
    from fastavro.schema import fingerprint, to_parsing_canonical_form

    parsed = fastavro.parse_schema(schema)
    names = {f["name"] for f in schema["fields"]}
    unknown = set(fields) - names
    if unknown:
        raise SystemExit(f"{schema['name']}: fields {sorted(unknown)} not in this release's schema")
    record = {f["name"]: fields.get(f["name"], f.get("default")) for f in schema["fields"]}
    buf = io.BytesIO()
    buf.write(b"\xc3\x01" + bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO")))
    fastavro.schemaless_writer(buf, parsed, record)
    return buf.getvalue()


def cmd_encode(version: int, only: list[str]) -> None:
    out = HERE / f"v{version}"
    out.mkdir(exist_ok=True)
    for name, events in histories(version).items():
        if only and name not in only:
            continue
        records = [
            {
                "key": fields["task_id"],
                "event_type": kind,
                "value": encode_record(writer_schema(kind, version), fields).hex(),
            }
            for kind, fields in events
        ]
        doc = {
            "schema_version": version,
            "release": RELEASES[version],
            "history": name,
            "records": records,
            "states": {},
        }
        (out / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
        print(f"{out.name}/{name}.json: {len(records)} records")


# ------------------------------------------------------------- folding with a release's code


def cmd_checkout(commit: str, target: str) -> None:
    """Export ``commit`` laid out as the ``taskstream`` package (as pyproject's package-dir maps it)."""
    root = Path(target)
    src = root / "src"
    src.mkdir(parents=True, exist_ok=False)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    pkg = root / "taskstream"
    pkg.mkdir()
    (pkg / "__init__.py").write_text((src / "_pkg" / "__init__.py").read_text())
    for sub in ("schemas", "streams", "executors", "api", "cli"):
        (pkg / sub).symlink_to(src / sub)
    print(f"PYTHONPATH={root}")


def state_json(state) -> dict:
    def plain(v):
        if isinstance(v, list):  # a gate's spent starts (set 8)
            return [plain(x) for x in v]
        return v.isoformat() if isinstance(v, datetime) else v

    return {k: plain(v) for k, v in dataclasses.asdict(state).items()}


def cmd_states(version: int, only: list[str]) -> None:
    import taskstream
    from taskstream.schemas import codec
    from taskstream.streams import domain

    print(f"folding with {Path(taskstream.__file__).parent}", file=sys.stderr)
    for path in sorted((HERE / f"v{version}").glob("*.json")):
        if only and path.stem not in only:
            continue
        doc = json.loads(path.read_text())
        by_task: dict[str, list] = {}
        for rec in doc["records"]:
            event = codec.decode(bytes.fromhex(rec["value"]))
            assert type(event).__name__ == rec["event_type"] and event.task_id == rec["key"], rec
            by_task.setdefault(rec["key"], []).append(event)
        # Since issue 25 dependents are edges outside the state: fold as the API shows a task (older code: fold).
        fold = getattr(domain, "fold_with_dependents", domain.fold)
        doc["states"] = {task: state_json(fold(events)) for task, events in by_task.items()}
        path.write_text(json.dumps(doc, indent=1) + "\n")
        shown = ", ".join(f"{t} {s.get('status', 'gate')}" for t, s in doc["states"].items())
        print(f"{path.parent.name}/{path.name}: {shown}")


if __name__ == "__main__":
    match sys.argv[1:]:
        case ["encode", v, *only]:
            cmd_encode(int(v), only)
        case ["checkout", commit, target]:
            cmd_checkout(commit, target)
        case ["states", v, *only]:
            cmd_states(int(v), only)
        case _:
            raise SystemExit(__doc__)
