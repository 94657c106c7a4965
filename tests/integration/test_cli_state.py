"""`taskstream state rebuild|at` through the console script, against a real processor and executor.

One stack runs tasks with a retry, a dependency, an unknown upstream and a
dead letter; then the processor is stopped and the log folded again must
equal its ``<p>.state``. A wrong TaskState written to ``<p>.state`` is
reported (exit 1, task and field); ``--write`` repairs it from the log.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from taskstream.cli.dev import settings_env
from taskstream.schemas import Settings, TaskCreated, Topics, codec, new_id
from taskstream.schemas.kafka import producer_config
from tests.conftest import SESSION_TIMEOUT_MS
from tests.integration.test_dag import StateTable
from tests.integration.test_time import start
from tests.kafka_helpers import TopicReader, send_events, stop_all

pytestmark = pytest.mark.integration

CLI = os.path.join(os.path.dirname(os.sys.executable), "taskstream")


def run(settings: Settings, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], env={**os.environ, **settings_env(settings)}, capture_output=True,
                          text=True, timeout=timeout)


def task(handler: str, payload=None, **kw) -> TaskCreated:
    return TaskCreated(task_id=new_id(), occurred_at=datetime.now(UTC), producer="test", handler=handler,
                       payload=codec.dumps_json(payload), **kw)


@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory):
    """A prefix whose tasks all ran to the end on a processor and executor that are stopped again."""
    tmp = tmp_path_factory.mktemp("state")
    settings = Settings(bootstrap_servers=broker, prefix=f"t{new_id()[:10]}", partitions=3,
                        data_dir=tmp / "data", session_timeout_ms=SESSION_TIMEOUT_MS)
    from taskstream.schemas import catalogue
    from taskstream.schemas.kafka import ensure_topics

    ensure_topics(settings, catalogue(settings))
    proc = start(settings, tmp, "processor", name="processor")
    ex = start(settings, tmp, "executor", name="executor")
    table = StateTable(settings)
    flaky = task("t.flaky", {"succeed_at": 2}, max_attempts=3, backoff_initial_s=0.2, backoff_jitter=0.0)
    up = task("noop")
    down = task("noop", depends_on=[up.task_id, flaky.task_id])
    orphan = task("noop", depends_on=[new_id()])
    doomed = task("t.flaky", {"succeed_at": 9}, max_attempts=1)
    tasks = [flaky, up, down, orphan, doomed]
    try:
        send_events(settings, tasks)
        want = {flaky.task_id: "succeeded", up.task_id: "succeeded", down.task_id: "succeeded",
                orphan.task_id: "upstream_failed", doomed.task_id: "failed"}
        table.until(lambda s: all(s.get(t) is not None and s[t].status == w for t, w in want.items()), timeout=60,
                    message="every task ended", procs=(proc, ex))
    finally:
        table.close()
        stop_all(ex, proc)
    events = TopicReader(settings, Topics(settings.prefix).events)
    try:
        events.until(lambda ms: any(getattr(e, "task_id", None) == flaky.task_id
                                    and type(e).__name__ == "TaskSucceeded" for e in events.values()),
                     timeout=10, message="flaky's success in the log")
        log = [e for e in events.values() if e is not None]
    finally:
        events.close()
    return settings, {"flaky": flaky, "up": up, "down": down, "orphan": orphan, "doomed": doomed}, log, tmp


def test_rebuild_verify_agrees_with_the_live_state(stack):
    settings, tasks, _log, _tmp = stack
    r = run(settings, "state", "rebuild", "--verify")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "checked 5 tasks and 0 schedules" in r.stdout
    assert "events/s" in r.stdout and "OK: the live state (5 states)" in r.stdout
    j = run(settings, "state", "rebuild", "--verify", "--json", "--workers", "2")  # the process pool's path
    assert j.returncode == 0, j.stderr
    summary = json.loads(j.stdout.splitlines()[-1])
    assert (summary["tasks"], summary["ok"], summary["mismatches"], summary["live"]) == (5, True, 0, 5)
    assert summary["events"] >= 5 * 3 and summary["workers"] == 2


def test_a_corrupted_state_is_reported_then_repaired_with_write(stack):
    settings, tasks, _log, _tmp = stack
    from confluent_kafka import Producer

    flaky = tasks["flaky"].task_id
    table = StateTable(settings)
    try:
        live = table.until(lambda s: flaky in s, timeout=10, message="flaky's state")[flaky]
    finally:
        table.close()
    wrong = replace(live, status="failed", attempt=3, version=live.version + 1)
    p = Producer(producer_config(settings, "test-corrupt"))
    p.produce(Topics(settings.prefix).state, codec.encode(wrong), flaky.encode())
    assert p.flush(10) == 0

    r = run(settings, "state", "rebuild", "--verify")
    assert r.returncode == 1, r.stdout + r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(flaky)]
    assert f"{flaky}\tstatus\tlive='failed'\trebuilt='succeeded'" in lines
    assert any("\tattempt\tlive=3\trebuilt=2" in ln for ln in lines)
    assert "MISMATCH: 1 id(s)" in r.stdout
    j = run(settings, "state", "rebuild", "--verify", "--json")
    assert j.returncode == 1
    rows = [json.loads(x) for x in j.stdout.splitlines()[:-1]]
    assert {"id": flaky, "field": "status", "live": "failed", "rebuilt": "succeeded"} in rows

    w = run(settings, "state", "rebuild", "--write")
    assert w.returncode == 0, w.stdout + w.stderr
    assert "wrote 5 states" in w.stdout and "up to processor commits" in w.stdout
    again = run(settings, "state", "rebuild", "--verify")
    assert again.returncode == 0, again.stdout + again.stderr


def test_state_at_travels_in_time(stack):
    settings, tasks, log, _tmp = stack
    flaky = tasks["flaky"].task_id
    failed = next(e for e in log if e.task_id == flaky and type(e).__name__ == "TaskFailed")
    r = run(settings, "state", "at", failed.occurred_at.isoformat(), "--task", flaky, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["id"], doc["status"], doc["attempt"]) == (flaky, "scheduled", 1)
    created = tasks["flaky"].occurred_at
    before = run(settings, "state", "at", (created - timedelta(seconds=1)).isoformat(), "--task", flaky)
    assert before.returncode == 1 and "did not exist" in before.stderr
    everything = run(settings, "state", "at", datetime.now(UTC).isoformat(), "--json")
    assert everything.returncode == 0, everything.stderr
    statuses = {d["id"]: d["status"] for d in map(json.loads, everything.stdout.splitlines())}
    assert statuses == {t.task_id: s for t, s in ((tasks["flaky"], "succeeded"), (tasks["up"], "succeeded"),
                                                  (tasks["down"], "succeeded"), (tasks["orphan"], "upstream_failed"),
                                                  (tasks["doomed"], "failed"))}
    table = run(settings, "state", "at", failed.occurred_at.isoformat())
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:3] == ["ID", "STATUS", "ATTEMPT"]
    assert any(ln.startswith(flaky) and " scheduled " in ln for ln in table.stdout.splitlines())


def test_bad_prefix_unreachable_broker_and_bad_time(settings):
    bad = settings.model_copy(update={"prefix": "no-such-prefix"})
    for args in (("state", "rebuild", "--verify"), ("state", "at", "2026-01-01T00:00:00Z")):
        r = run(bad, *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "no-such-prefix.events" in r.stderr
        assert "Traceback" not in r.stderr
    down = settings.model_copy(update={"bootstrap_servers": "127.0.0.1:1"})
    for args in (("state", "rebuild", "--timeout", "2"), ("state", "at", "2026-01-01T00:00:00Z", "--timeout", "2")):
        r = run(down, *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "127.0.0.1:1" in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    t = run(settings, "state", "at", "yesterday")
    assert t.returncode == 2 and "RFC 3339" in t.stderr


def test_a_processor_restarted_after_write_works_on_the_repaired_state(stack):
    """doomed's live state says succeeded (wrong): --write puts back failed, so a redrive runs it again."""
    from confluent_kafka import Producer

    from taskstream.schemas import TaskRedriven

    settings, tasks, _log, tmp = stack
    doomed = tasks["doomed"].task_id
    table = StateTable(settings)
    try:
        live = table.until(lambda s: doomed in s, timeout=10, message="doomed's state")[doomed]
        assert live.status == "failed"
        p = Producer(producer_config(settings, "test-corrupt"))
        p.produce(Topics(settings.prefix).state, codec.encode(replace(live, status="succeeded", error=None)),
                  doomed.encode())
        assert p.flush(10) == 0
        bad = run(settings, "state", "rebuild", "--verify")
        assert bad.returncode == 1 and f"{doomed}\tstatus\tlive='succeeded'\trebuilt='failed'" in bad.stdout
        assert run(settings, "state", "rebuild", "--write").returncode == 0
        fresh = settings.model_copy(update={"data_dir": tmp / "data-after-write"})
        proc = start(fresh, tmp, "processor", name="processor2")
        ex = start(fresh, tmp, "executor", name="executor2")
        try:
            send_events(settings, [TaskRedriven(task_id=doomed, occurred_at=datetime.now(UTC), producer="test")])
            again = table.until(lambda s: s[doomed].status == "failed" and s[doomed].attempt == 2, timeout=60,
                                message="doomed re-driven and failed again at attempt 2", procs=(proc, ex))
            assert again[doomed].error and "attempt 2 fails" in again[doomed].error
        finally:
            stop_all(ex, proc)
    finally:
        table.close()
