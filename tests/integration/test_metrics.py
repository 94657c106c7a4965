"""Prometheus metrics and JSON logs of a running system (issue 7 items 1 and 3).

A processor and an executor run as ``taskstream`` subprocesses, each with
its own metrics port, the executor with ``TASKSTREAM_LOG_FORMAT=json``; the
API runs in-process. Every ``/metrics`` is scraped before and after a few
tasks (one of them failing, one waiting for a dependency) and the counters
must have moved by exactly those tasks, with the right labels. The
executor's stderr must be JSON lines, those about the tasks with
``task_id`` and ``attempt``, and no line may show a payload.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from taskstream.api import create_app
from taskstream.cli.broker import free_port
from taskstream.cli.dev import settings_env
from taskstream.schemas import Settings
from tests.conftest import wait_until
from tests.kafka_helpers import Component, stop_all

pytestmark = pytest.mark.integration

V1 = "/api/v1"
SECRET = "s3cr3t-payload-value-7d1f"
HANDLERS = '''\
from taskstream.executors import handler


@handler("boom")
def boom(payload, ctx):
    raise ValueError("planned failure")
'''


class ComponentIn(Component):
    """A ``taskstream`` subprocess run in ``cwd`` (where a handler module lives), stderr to ``log_path``."""

    def __init__(self, settings: Settings, *args: str, cwd, log_path) -> None:
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "taskstream.cli.main", *args],
                                     env={**os.environ, **settings_env(settings)}, cwd=cwd,
                                     stdout=self.log, stderr=self.log, start_new_session=True)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a Prometheus text page: (name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        return samples(r.read().decode())


def value(page: dict, name: str, **labels) -> float:
    return page.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_with_labels_and_logs_are_json(settings: Settings, tmp_path) -> None:
    (tmp_path / "metrics_handlers.py").write_text(HANDLERS)
    proc_port, exec_port = free_port(), free_port()
    proc_url, exec_url = f"http://127.0.0.1:{proc_port}/metrics", f"http://127.0.0.1:{exec_port}/metrics"
    proc_log, exec_log = tmp_path / "processor.log", tmp_path / "executor.log"
    processor = ComponentIn(settings.model_copy(update={"metrics_port": proc_port}), "processor",
                            cwd=tmp_path, log_path=proc_log)
    executor = ComponentIn(settings.model_copy(update={"metrics_port": exec_port, "log_format": "json"}),
                           "executor", "--handlers", "metrics_handlers", cwd=tmp_path, log_path=exec_log)
    try:
        with TestClient(create_app(settings)) as api:
            def api_page():
                r = api.get("/metrics")
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
                return samples(r.text)

            before_api = api_page()
            before_proc = wait_until(lambda: _try(scrape, proc_url), timeout=30, message="processor metrics port")
            before_exec = wait_until(lambda: _try(scrape, exec_url), timeout=30, message="executor metrics port")
            # Every priority and every registered handler is there from the start, at 0.
            for priority in ("high", "medium", "low"):
                assert (("taskstream_tasks_submitted_total", (("priority", priority),)) in before_api)
                assert value(before_exec, "taskstream_tasks_completed_total", priority=priority, handler="boom") == 0

            def post(body):
                r = api.post(f"{V1}/tasks", json=body)
                assert r.status_code == 202, r.text
                return r.json()["id"]

            first = post({"handler": "noop", "priority": "high"})
            ok = [first, post({"handler": "noop", "priority": "high"}),
                  post({"handler": "echo", "priority": "low", "payload": {"x": 1}}),
                  post({"handler": "noop", "priority": "medium", "depends_on": [first]})]
            failing = post({"handler": "boom", "priority": "low", "payload": {"password": SECRET},
                            "retry": {"max_attempts": 1}})

            def statuses():
                return {t: api.get(f"{V1}/tasks/{t}").json()["status"] for t in [*ok, failing]}

            wait_until(lambda: statuses() == {**{t: "succeeded" for t in ok}, failing: "failed"}, timeout=60,
                       message="4 tasks succeeded and 1 failed")

            after_api = api_page()
            for priority, n in (("high", 2), ("medium", 1), ("low", 2)):
                moved = value(after_api, "taskstream_tasks_submitted_total", priority=priority) - value(
                    before_api, "taskstream_tasks_submitted_total", priority=priority)
                assert moved == n, (priority, moved)
            # Broker-measured figures of the API: the executor group committed everything it ran, the read
            # model caught up (both eventually: commits and <p>.state arrive a moment after the results).
            wait_until(lambda: all(value(api_page(), "taskstream_queue_size", priority=p) == 0
                                   for p in ("high", "medium", "low")), timeout=15, message="queue size 0")
            wait_until(lambda: ("taskstream_read_model_lag", ()) in (page := api_page())
                       and page[("taskstream_read_model_lag", ())] == 0, timeout=15, message="read model lag 0")

            def executor_moved():
                page = scrape(exec_url)
                return page if value(page, "taskstream_tasks_failed_total", priority="low", handler="boom",
                                     reason="error") == 1 else None

            after_exec = wait_until(executor_moved, timeout=10, message="the executor's failure counter")
            for labels, n in ((dict(priority="high", handler="noop"), 2), (dict(priority="medium", handler="noop"), 1),
                              (dict(priority="low", handler="echo"), 1)):
                assert value(after_exec, "taskstream_tasks_completed_total", **labels) - value(
                    before_exec, "taskstream_tasks_completed_total", **labels) == n, labels
            assert value(after_exec, "taskstream_task_duration_seconds_count", handler="noop") == 3
            assert value(after_exec, "taskstream_task_duration_seconds_count", handler="boom") == 1
            assert not any(name == "taskstream_tasks_completed_total" and dict(labels)["handler"] == "boom"
                           and v for (name, labels), v in after_exec.items())
            assert not any(dict(labels).get("task_id") for (_, labels) in after_exec)  # never a task id

            after_proc = scrape(proc_url)
            assert value(after_proc, "taskstream_dependency_wait_seconds_count") - value(
                before_proc, "taskstream_dependency_wait_seconds_count") == 1
            assert value(after_proc, "taskstream_processor_events_folded_total") > value(
                before_proc, "taskstream_processor_events_folded_total")
            assert ("taskstream_processor_lag", ()) in after_proc
    finally:
        stop_all(executor, processor)

    lines = exec_log.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert records and all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    [failed] = [r for r in records if r.get("task_id") == failing and "failed" in r["message"]]
    # INFO names the exception type; its text and traceback are DEBUG only (a handler's error may quote its payload)
    assert failed["attempt"] == 1 and failed["level"] == "INFO" and failed["message"].endswith("(ValueError)")
    assert "planned failure" not in failed["message"] and "exc_info" not in failed
    for path in (exec_log, proc_log):
        assert SECRET not in path.read_text(), f"{path.name} shows a payload"


def _try(fn, *args):
    try:
        return fn(*args)
    except OSError:
        return None
