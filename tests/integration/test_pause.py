"""Pause and resume end to end on the real broker (issue 28 item 3), through the API, the client and the CLI.

A whole stack (processor, executor, API; three partitions) runs as
``taskstream`` processes. A paused handler starts nothing until it is resumed:
its tasks, submitted after the pause, wait ``pending`` with ``waiting_for:
"paused:handler:<name>"`` while tasks of another handler run; the resume
runs every one of them. A paused workflow holds its tasks the same way. A
handler limit of 2 never lets more than 2 of its attempts run at once.
``state rebuild --verify`` finds the live tables (the pause's copies and the
held and released tasks) equal to a fold of the log.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from taskstream.client import Client
from taskstream.streams.rebuild import rebuild
from tests.conftest import wait_until
from tests.integration.live_stack import LiveStack

pytestmark = [pytest.mark.integration]

RECORD = '''
import os, time
from taskstream.executors import handler

@handler("pause.record")
def record(payload, ctx):
    with open(payload["log"], "a") as f:
        f.write(f"{ctx.task_id} {time.time()}\\n")
    return {"ok": True}

@handler("pause.slow")
def slow(payload, ctx):
    with open(payload["log"], "a") as f:
        f.write(f"{ctx.task_id} start {time.time()}\\n")
    time.sleep(0.2)
    with open(payload["log"], "a") as f:
        f.write(f"{ctx.task_id} end {time.time()}\\n")
    return {"ok": True}
'''

HELD = 8


@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory):
    s = LiveStack(broker, tmp_path_factory.mktemp("pause"), modules={"pausehandlers": RECORD}).wait_ready()
    try:
        yield s
    finally:
        s.stop()


def _cli(stack: LiveStack, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "taskstream.cli.main", *args, "--url", stack.url],
                         env=stack.env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_paused_handler_starts_nothing_until_resumed_and_other_handlers_run(stack, tmp_path):
    log = tmp_path / "starts.log"
    log.touch()
    with Client(stack.url) as client:
        pause = json.loads(_cli(stack, "handlers", "pause", "pause.record", "--reason", "deploy", "--json"))
        assert pause["paused"] and pause["partitions_paused"] == 3 and pause["reason"] == "deploy"
        assert [p["name"] for p in client.pauses(kind="handler")] == ["pause.record"]
        held = [client.submit("pause.record", {"log": str(log)}).id for _ in range(HELD)]
        others = [client.submit("noop", {}).id for _ in range(4)]

        def waiting() -> bool:
            tasks = [client.get(t) for t in held]
            return all(t.status == "pending" and t.raw.get("waiting_for") == "paused:handler:pause.record"
                       for t in tasks)

        wait_until(waiting, timeout=30, interval=0.3, message="the paused handler's tasks held")
        wait_until(lambda: all(client.get(t).status == "succeeded" for t in others), timeout=30, interval=0.3,
                   message="another handler's tasks run meanwhile")
        assert log.read_text() == ""  # nothing of the paused handler started
        assert "pause.record" in _cli(stack, "handlers", "paused")

        client.resume_handler("pause.record")
        wait_until(lambda: all(client.get(t).status == "succeeded" for t in held), timeout=60, interval=0.3,
                   message="every held task ran after the resume")
        assert sorted(line.split()[0] for line in log.read_text().splitlines()) == sorted(held)
        assert client.pauses() == []
    report = wait_until(lambda: (r := rebuild(stack.settings, verify=True)).mismatches == [] and r, timeout=30,
                        interval=1.0, message="state rebuild --verify without a mismatch")
    assert report.tasks >= HELD


def test_a_paused_workflow_holds_its_next_task_until_resumed(stack):
    with Client(stack.url) as client:
        wf = client.workflow([{"key": "a", "handler": "hold"}, {"key": "b", "handler": "noop", "depends_on": ["a"]}])
        a, b = wf.task_ids["a"], wf.task_ids["b"]
        wait_until(lambda: (stack.folder / "held" / a).exists(), timeout=30, interval=0.2, message="a running")
        paused = client.pause_workflow(wf.id, reason="inspect")
        assert paused["paused"] and [p["name"] for p in client.pauses(kind="workflow")] == [wf.id]
        (stack.folder / "release").mkdir(exist_ok=True)
        (stack.folder / "release" / a).touch()  # a, already running, finishes; b, ready now, is held
        wait_until(lambda: client.get(a).status == "succeeded", timeout=30, interval=0.2, message="a succeeded")
        wait_until(lambda: client.get(b).raw.get("waiting_for") == f"paused:workflow:{wf.id}", timeout=30,
                   interval=0.2, message="b held by the workflow's pause")
        assert client.get(b).status == "pending"
        client.resume_workflow(wf.id)
        wait_until(lambda: client.get(b).status == "succeeded", timeout=30, interval=0.2, message="b ran")


def _most_at_once(lines: list[str]) -> int:
    """The most attempts between their start and end at any instant (an end before a start at the same time)."""
    points = sorted((float(at), 0 if kind == "end" else 1) for _, kind, at in (line.split() for line in lines))
    now = most = 0
    for _, kind in points:
        now += 1 if kind else -1
        most = max(most, now)
    return most


def test_a_handler_limit_of_two_never_runs_more_than_two_at_once(stack, tmp_path):
    log = tmp_path / "slow.log"
    log.touch()
    with Client(stack.url) as client:
        assert client.set_handler_limit("pause.slow", 2)["limit"] == 2
        assert {"kind": "handler", "name": "pause.slow", "limit": 2, "rate": None,
                "per_s": None} in client.handler_limits()
        ids = [client.submit("pause.slow", {"log": str(log)}).id for _ in range(12)]
        wait_until(lambda: all(client.get(t).status == "succeeded" for t in ids), timeout=60, interval=0.3,
                   message="every task of the limited handler succeeded")
        lines = log.read_text().splitlines()
        assert len(lines) == 24
        assert _most_at_once(lines) == 2, lines  # never more than the limit, and the limit used
        assert client.get(ids[0]).raw.get("concurrency") == {"key": "handler:pause.slow", "limit": 2}
        client.set_handler_limit("pause.slow", None)
        assert client.handler_limits() == []
