"""`taskstream tasks|workflows|schedules` as users run them: the console script against a live stack."""

from __future__ import annotations

import json
import subprocess

import pytest

from taskstream.cli.broker import free_port
from tests.conftest import wait_until
from tests.integration.live_stack import LiveStack
from tests.integration.test_cli import _cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory):
    s = LiveStack(broker, tmp_path_factory.mktemp("cli-tasks")).wait_ready()
    yield s
    s.stop()


@pytest.fixture
def run(stack):
    def run(*args: str, timeout: float = 60, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([*_cli(), *args], env={**stack.env(), **env}, capture_output=True, text=True,
                              timeout=timeout, input=stdin)
    return run


def one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_submit_wait_of_a_succeeding_task(run) -> None:
    r = run("tasks", "submit", "echo", "--payload", '{"hello": "world"}', "--priority", "high", "--label", "team=a",
            "--name", "greet", "--wait", "--wait-timeout", "30")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("id ") and any(line.split() == ["status", "succeeded"] for line in lines), r.stdout
    assert '"hello": "world"' in r.stdout and "team=a" in r.stdout and "greet" in r.stdout
    assert "succeeded after" in r.stderr


def test_submit_wait_of_a_failing_task_exits_1(run) -> None:
    r = run("tasks", "submit", "fail", "--payload", '{"message": "disk full"}', "--wait", "--json")
    assert r.returncode == 1, r.stderr
    task = json.loads(r.stdout)
    assert task["status"] == "failed" and "disk full" in task["error"]
    r = run("tasks", "submit", "fail", "--wait")
    assert r.returncode == 1 and "planned failure" in r.stdout and "failed after" in r.stderr


def test_json_outputs_parse_and_get_list_events(run, tmp_path) -> None:
    payload = tmp_path / "p.json"
    payload.write_text('{"n": [1, 2]}')
    r = run("tasks", "submit", "echo", "--payload", f"@{payload}", "--label", "suite=cli", "--max-attempts", "2",
            "--backoff-initial", "0.5", "--json")
    assert r.returncode == 0, r.stderr
    task = json.loads(r.stdout)
    assert task["payload"] == {"n": [1, 2]} and task["retry"]["max_attempts"] == 2
    assert task["retry"]["backoff"]["initial_s"] == 0.5
    assert json.loads(run("tasks", "submit", "noop", "--wait", "--json").stdout)["status"] == "succeeded"

    got = json.loads(run("tasks", "get", task["id"], "--json").stdout)
    assert got["id"] == task["id"]
    r = run("tasks", "get", task["id"])
    assert r.returncode == 0 and task["id"] in r.stdout and "handler" in r.stdout

    r = run("tasks", "list", "--label", "suite=cli", "--json")
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == [task["id"]]
    r = run("tasks", "list", "--handler", "echo", "--limit", "3")
    assert r.returncode == 0 and r.stdout.splitlines()[0].split()[:3] == ["ID", "STATUS", "PRIORITY"]
    assert 2 <= len(r.stdout.splitlines()) <= 4

    run("tasks", "submit", "noop", "--wait")  # something after it, so its events are surely all there
    r = run("tasks", "events", task["id"], "--json")
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[0]["type"] == "TaskCreated" and "TaskSucceeded" in [e["type"] for e in events]
    r = run("tasks", "events", task["id"], "--follow", "--interval", "0.2", timeout=30)
    assert r.returncode == 0 and r.stdout.splitlines()[0].startswith("OCCURRED") and "TaskSucceeded" in r.stdout


def test_tasks_watch_follows_a_task_live_until_it_ends(run) -> None:
    task = json.loads(run("tasks", "submit", "sleep", "--payload", '{"seconds": 1}', "--json").stdout)
    r = run("tasks", "watch", task["id"], "--json")
    assert r.returncode == 0, r.stderr
    states = [json.loads(line) for line in r.stdout.splitlines()]
    assert {t["id"] for t in states} == {task["id"]}
    assert states[-1]["status"] == "succeeded"
    versions = [t["version"] for t in states]
    assert versions == sorted(set(versions)), versions  # every change once, in order
    failing = json.loads(run("tasks", "submit", "fail", "--json").stdout)
    r = run("tasks", "watch", failing["id"])
    assert r.returncode == 1 and "failed" in r.stdout and "planned failure" in r.stdout, r.stdout
    assert run("tasks", "watch", "no-such-task").returncode == 1


def test_a_bad_id_is_one_line_on_stderr(run) -> None:
    for command in ("get", "cancel", "retry", "events"):
        r = run("tasks", command, "no-such-task")
        assert r.returncode == 1
        assert one_error_line(r) == "Error: 404 Not found: task no-such-task not found"
    r = run("tasks", "submit", "noop", "--max-attempts", "0")
    assert "retry.max_attempts" in one_error_line(r)
    r = run("tasks", "submit", "noop", "--payload", "{not json")
    assert r.returncode == 2 and "--payload" in r.stderr and "Traceback" not in r.stderr


def test_cancel_and_retry(run) -> None:
    later = json.loads(run("tasks", "submit", "noop", "--run-at", "+1h", "--json").stdout)
    assert later["status"] == "scheduled"
    r = run("tasks", "cancel", later["id"], "--reason", "not needed")
    assert r.returncode == 0 and r.stdout.strip() == f"cancelled {later['id']}: now cancelled (version 2)"
    assert "already cancelled" in one_error_line(run("tasks", "cancel", later["id"]))

    failed = json.loads(run("tasks", "submit", "fail", "--wait", "--json").stdout)
    r = run("tasks", "retry", failed["id"], "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["status"] in ("scheduled", "queued")
    ok = json.loads(run("tasks", "submit", "noop", "--wait", "--json").stdout)
    assert "only failed or upstream_failed" in one_error_line(run("tasks", "retry", ok["id"]))


def test_depends_on_and_wait_timeout(run) -> None:
    failed = json.loads(run("tasks", "submit", "fail", "--wait", "--json").stdout)
    r = run("tasks", "submit", "noop", "--depends-on", failed["id"], "--wait", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["status"] == "upstream_failed"
    line = one_error_line(run("tasks", "submit", "noop", "--run-at", "+1h", "--wait", "--wait-timeout", "0.5"))
    assert line.startswith("Error: Wait timed out: task ") and line.endswith("is still scheduled after 0.5s")


def test_workflows_submit_yaml_and_json(run, tmp_path) -> None:
    wf = tmp_path / "wf.yaml"
    wf.write_text("tasks:\n  - key: extract\n    handler: echo\n    payload: {rows: 3}\n"
                  "  - key: load\n    handler: noop\n    depends_on: [extract]\n")
    r = run("workflows", "submit", str(wf), "--wait", "--wait-timeout", "30")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()]
    assert rows[1] == ["KEY", "TASK", "ID", "STATUS"]
    assert [(row[0], row[2]) for row in rows[2:]] == [("extract", "succeeded"), ("load", "succeeded")]

    failing = tmp_path / "wf.json"
    failing.write_text(
        json.dumps([{"key": "a", "handler": "fail"}, {"key": "b", "handler": "noop", "depends_on": ["a"]}])
    )
    r = run("workflows", "submit", str(failing), "--wait", "--json")
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert doc["status"] == {"a": "failed", "b": "upstream_failed"} and set(doc["tasks"]) == {"a", "b"}

    cycle = tmp_path / "cycle.json"
    cycle.write_text('{"tasks": [{"key": "a", "handler": "noop", "depends_on": ["a"]}]}')
    assert "dependency cycle" in one_error_line(run("workflows", "submit", str(cycle)))
    broken = tmp_path / "broken.yaml"
    broken.write_text("tasks: [\n")
    r = run("workflows", "submit", str(broken))
    assert r.returncode == 2 and "broken.yaml" in r.stderr and "Traceback" not in r.stderr


def test_workflows_get_list_watch(run, tmp_path) -> None:
    spec = tmp_path / "wf.json"
    spec.write_text(json.dumps({"tasks": [{"key": "load", "handler": "noop", "depends_on": ["extract"]},
                                          {"key": "extract", "handler": "echo", "payload": {"rows": 3}}]}))
    submitted = json.loads(run("workflows", "submit", str(spec), "--json").stdout)
    wid = submitted["workflow_id"]
    r = run("workflows", "watch", wid, "--interval", "0.2", "--timeout", "30")
    assert r.returncode == 0, r.stderr
    assert "succeeded" in r.stdout and wid in r.stdout
    r = run("workflows", "get", wid)
    assert r.returncode == 0, r.stderr
    lines = [line.split() for line in r.stdout.splitlines()]
    assert ["status", "succeeded"] in lines and ["tasks", "2", "succeeded"] in lines
    keys = [row[0] for row in lines if row and row[0] in ("extract", "load")]
    assert keys == ["extract", "load"]  # dependency order
    load = next(row for row in lines if row and row[0] == "load")
    assert load[1:4] == ["succeeded", "noop", "1/3"] and load[4] == "extract" and submitted["tasks"]["load"] in load
    doc = json.loads(run("workflows", "get", wid, "--json").stdout)
    assert doc["status"] == "succeeded" and [t["key"] for t in doc["tasks"]] == ["extract", "load"]

    failing = tmp_path / "fail.json"
    failing.write_text(json.dumps([{"key": "a", "handler": "fail"}, {"key": "b", "handler": "noop",
                                                                       "depends_on": ["a"]}]))
    bad = json.loads(run("workflows", "submit", str(failing), "--json").stdout)["workflow_id"]
    r = run("workflows", "watch", bad, "--json", "--interval", "0.2", "--timeout", "30")
    assert r.returncode == 1, r.stderr
    states = [json.loads(line) for line in r.stdout.splitlines()]
    assert states[-1]["status"] == "failed" and all(s["id"] == bad for s in states)

    listed = [json.loads(line) for line in run("workflows", "list", "--json", "--limit", "2").stdout.splitlines()]
    assert [w["id"] for w in listed] == [bad, wid]
    r = run("workflows", "list", "--status", "failed")
    assert r.returncode == 0 and bad in r.stdout and wid not in r.stdout and "1 failed" in r.stdout
    assert "not found" in one_error_line(run("workflows", "get", "nope")).lower()
    r = run("workflows", "list", "--status", "done")
    assert r.returncode == 2 and "done" in r.stderr


def test_schedules_create_list_delete(run) -> None:
    r = run("schedules", "create", "0 9 * * 1-5", "echo", "--payload", '{"kind": "daily"}', "--timezone",
            "Europe/Paris", "--name", "report", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["status"] == "active" and s["task"]["payload"] == {"kind": "daily"} and s["timezone"] == "Europe/Paris"
    r = run("schedules", "list")
    assert r.returncode == 0 and s["id"] in r.stdout and "0 9 * * 1-5" in r.stdout and "report" in r.stdout
    assert json.loads(run("schedules", "get", s["id"], "--json").stdout)["name"] == "report"
    r = run("schedules", "delete", s["id"])
    assert r.returncode == 0 and "deleted" in r.stdout
    assert "already deleted" in one_error_line(run("schedules", "delete", s["id"]))
    assert "cron" in one_error_line(run("schedules", "create", "every day", "noop"))


def test_schedules_pause_run_resume(run) -> None:
    s = json.loads(run("schedules", "create", "0 9 * * *", "echo", "--payload", '{"n": 1}', "--json").stdout)
    r = run("schedules", "pause", s["id"], "--reason", "holiday", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "paused"
    assert s["id"] in run("schedules", "list", "--status", "paused").stdout
    r = run("schedules", "run", s["id"])
    assert r.returncode == 0, r.stderr
    task_id = r.stdout.splitlines()[0].removeprefix("task ")
    done = wait_until(lambda: (t := json.loads(run("tasks", "get", task_id, "--json").stdout))["status"] == "succeeded"
                      and t, timeout=60, interval=0.2, message="the task run-now created succeeds")
    assert done["status"] == "succeeded" and done["schedule_id"] == s["id"] and done["result"] == {"n": 1}
    r = run("schedules", "resume", s["id"], "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "active", r.stderr
    run("schedules", "delete", s["id"])
    assert "deleted" in one_error_line(run("schedules", "pause", s["id"]))


def test_url_option_and_an_unreachable_api(run, stack) -> None:
    r = run("tasks", "list", "--limit", "1", "--url", stack.url, TASKSTREAM_URL="http://127.0.0.1:1")
    assert r.returncode == 0, r.stderr
    closed = f"http://127.0.0.1:{free_port()}"
    line = one_error_line(run("tasks", "get", "x", "--url", closed))
    assert line.startswith(f"Error: API unreachable: cannot reach the taskstream API at {closed}")


def test_triggers_create_list_get_pause_resume_delete(run) -> None:
    """`taskstream triggers`: every command against the live API, its table and --json, and one-line refusals."""
    r = run("triggers", "create", "cli-orders", "shop.orders", "orders.handle", "--filter", '{"type": "order"}',
            "--start", "earliest", "--priority", "high", "--max-attempts", "2", "--json")
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout)
    assert (t["name"], t["topic"], t["status"], t["filter"], t["start"]) == (
        "cli-orders", "shop.orders", "active", {"type": "order"}, "earliest")
    assert t["task"]["handler"] == "orders.handle" and t["task"]["priority"] == "high"
    assert t["task"]["retry"]["max_attempts"] == 2

    r = run("triggers", "list")
    assert r.returncode == 0, r.stderr
    header, *rows = r.stdout.splitlines()
    assert header.split()[:4] == ["NAME", "TOPIC", "STATUS", "HANDLER"]
    assert ["cli-orders", "shop.orders", "active", "orders.handle"] in [row.split()[:4] for row in rows], r.stdout
    assert run("triggers", "get", "cli-orders", "--json").stdout.count('"cli-orders"') == 1

    for command, status in (("pause", "paused"), ("resume", "active"), ("delete", "deleted")):
        extra = ["--reason", "cli test"] if command != "resume" else []
        r = run("triggers", command, "cli-orders", *extra, "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["status"] == status, (command, r.stdout, r.stderr)
    listed = run("triggers", "list", "--status", "deleted", "--json").stdout.splitlines()
    assert "cli-orders" in [json.loads(line)["name"] for line in listed]

    assert "deleted" in one_error_line(run("triggers", "resume", "cli-orders"))
    assert "not found" in one_error_line(run("triggers", "get", "no-such-trigger"))
    assert "name" in one_error_line(run("triggers", "create", "has spaces", "shop.orders", "h"))
    r = run("triggers", "create", "x", "shop.orders", "h", "--filter", "{no")
    assert r.returncode == 2 and "Invalid value for '--filter': not JSON" in r.stderr, r.stderr  # click's usage error
