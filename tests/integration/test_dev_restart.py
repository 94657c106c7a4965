"""`taskstream dev` keeps the log: a second start on the same data directory finds everything, and the broker
it runs is supervised (killed under load, restarted on its own log, nothing acknowledged is lost).

Each test runs `taskstream dev` as a user does, in a temporary working directory, with its own Kafka node on
free loopback ports.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from taskstream.cli.broker import JVM_OPTIONS_ENV, free_port
from tests.conftest import wait_until
from tests.integration.test_e2e import descendants, still_alive, tail

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HANDLERS = """
import time

from taskstream.executors import PermanentError, handler


@handler("restart.ok")
def ok(payload, ctx):
    time.sleep(payload.get("sleep", 0))
    return {"n": payload["n"]}


@handler("restart.fail")
def fail(payload, ctx):
    raise PermanentError("planned failure " + str(payload["n"]))
"""

TERMINAL = {"succeeded", "failed", "cancelled", "upstream_failed"}


class Dev:
    """One `taskstream dev` subprocess on fixed ports and a data directory, in ``cwd``."""

    def __init__(self, cwd: Path, data_dir: Path, *extra: str) -> None:
        self.cwd, self.data_dir, self.extra = cwd, data_dir, extra
        self.api_port, self.broker_port = free_port(), free_port()
        self.log_path = cwd / "dev.log"
        self.proc: subprocess.Popen | None = None
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSTREAM_") or k == JVM_OPTIONS_ENV}
        self.env.update(TASKSTREAM_LOG_LEVEL="WARNING", TASKSTREAM_ALLOW_SECOND_CRON="true",
                        TASKSTREAM_GRPC_PORT=str(free_port()), TASKSTREAM_METRICS_PORT="0")
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.api_port}", timeout=10)

    def start(self, *more: str) -> Dev:
        cmd = [sys.executable, "-m", "taskstream.cli.main", "dev", "--port", str(self.api_port),
               "--broker-port", str(self.broker_port), "--data-dir", str(self.data_dir), "--handlers",
               "restart_handlers", *self.extra, *more]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self.ready, timeout=180, interval=0.2, message="dev's API ready")
        return self

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"dev exited with {self.proc.returncode}:\n{tail(self.log_path)}"
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        family = descendants(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=60) == 0, tail(self.log_path)
        wait_until(lambda: not still_alive(family), timeout=10, message="dev's children gone")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            family = descendants(self.proc.pid)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            for pid in still_alive(family):
                os.kill(pid, signal.SIGKILL)

    def submit(self, handler: str, payload: dict) -> str:
        r = self.http.post("/api/v1/tasks", json={"handler": handler, "payload": payload})
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def task(self, task_id: str) -> dict:
        r = self.http.get(f"/api/v1/tasks/{task_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def all_terminal(self, ids) -> dict[str, dict] | None:
        tasks = {i: self.task(i) for i in ids}
        return tasks if all(t["status"] in TERMINAL for t in tasks.values()) else None

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        env = {**self.env, "TASKSTREAM_BOOTSTRAP_SERVERS": f"127.0.0.1:{self.broker_port}"}
        return subprocess.run([sys.executable, "-m", "taskstream.cli.main", *args], env=env, cwd=self.cwd,
                              capture_output=True, text=True, timeout=120)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "restart_handlers.py").write_text(textwrap.dedent(HANDLERS))
    return tmp_path


def test_a_second_dev_on_the_same_data_dir_finds_tasks_histories_schedules_and_dead_letters(workdir: Path) -> None:
    dev = Dev(workdir, workdir / "data")
    stale = workdir / "data" / "read-model" / "from-a-log-that-is-gone"
    stale.mkdir(parents=True)
    try:
        dev.start()
        assert not stale.exists() and "folded from a log that is gone" in dev.log_path.read_text()
        ok = [dev.submit("restart.ok", {"n": n}) for n in range(20)]
        failed = dev.submit("restart.fail", {"n": 99})
        r = dev.http.post("/api/v1/schedules", json={"cron": "* * * * * */2", "name": "every-2s",
                                                     "task": {"handler": "restart.ok", "payload": {"n": -1}}})
        assert r.status_code in (200, 201, 202), r.text
        schedule_id = r.json()["id"]
        before = wait_until(lambda: dev.all_terminal([*ok, failed]), timeout=60, message="tasks finished")
        assert {before[i]["status"] for i in ok} == {"succeeded"}
        assert before[failed]["status"] == "failed"
        wait_until(lambda: dev.http.get("/api/v1/schedules").json()["schedules"][0]["fired"] >= 1, timeout=30,
                   message="the schedule fired before the restart")
        histories = {i: dev.http.get(f"/api/v1/tasks/{i}/events").json() for i in (ok[0], failed)}
        dev.stop()

        dev.start()  # the same data directory, the same ports
        after = {i: dev.task(i) for i in [*ok, failed]}
        for i in after:
            assert after[i]["status"] == before[i]["status"], (i, before[i], after[i])
            assert after[i]["result"] == before[i]["result"]
            assert after[i]["version"] == before[i]["version"]
        for i, history in histories.items():
            assert dev.http.get(f"/api/v1/tasks/{i}/events").json() == history
        schedule = dev.http.get(f"/api/v1/schedules/{schedule_id}").json()
        assert schedule["status"] == "active", schedule
        restarted_at = time.time()

        def fired_after_restart():  # the schedule keeps firing: a task of it created after the second start
            newest = dev.http.get("/api/v1/tasks", params={"handler": "restart.ok", "limit": 1}).json()["tasks"]
            return newest and newest[0]["payload"] == {"n": -1} and \
                datetime.fromisoformat(newest[0]["created_at"]).timestamp() >= restarted_at

        wait_until(fired_after_restart, timeout=60, message="the schedule fired after the restart")

        dlq = dev.cli("dlq", "list", "--json")
        assert dlq.returncode == 0, dlq.stderr
        assert failed in dlq.stdout, dlq.stdout
        dev.http.delete(f"/api/v1/schedules/{schedule_id}")
        verify = wait_until(lambda: (v := dev.cli("state", "rebuild", "--verify")).returncode == 0 and v,
                            timeout=60, interval=1, message="state rebuild --verify agreeing with the live state")
        assert "Traceback" not in verify.stderr
        dev.stop()

        dev.start("--fresh")  # starts from an empty log
        assert dev.http.get(f"/api/v1/tasks/{ok[0]}").status_code == 404
        assert dev.http.get("/api/v1/schedules").json()["schedules"] == []
        dev.stop()
    finally:
        dev.kill()


def _broker_pid(dev: Dev) -> int:
    for pid in descendants(dev.proc.pid):
        try:
            if b"kafka.Kafka" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            pass
    raise AssertionError("no Kafka process under dev")


def test_dev_restarts_a_killed_broker_and_every_acknowledged_task_finishes(workdir: Path) -> None:
    dev = Dev(workdir, workdir / "data")
    try:
        dev.start()
        ids = [dev.submit("restart.ok", {"n": n, "sleep": 0.05}) for n in range(60)]
        wait_until(lambda: any(dev.task(i)["status"] == "succeeded" for i in ids), timeout=30,
                   message="work under way")
        old = _broker_pid(dev)
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: "Kafka is back" in dev.log_path.read_text(), timeout=90, interval=0.2,
                   message="dev restarting the broker")
        assert _broker_pid(dev) != old
        # submitted after the restart, too
        ids += [dev.submit("restart.ok", {"n": n}) for n in range(60, 80)]

        def finished():
            try:
                return dev.all_terminal(ids)
            except (httpx.TransportError, AssertionError):
                return None

        done = wait_until(finished, timeout=180, interval=1, message="every acknowledged task finished")
        assert {t["status"] for t in done.values()} == {"succeeded"}, \
            [t for t in done.values() if t["status"] != "succeeded"]
        assert sorted(t["result"]["n"] for t in done.values()) == list(range(80))
        wait_until(dev.ready, timeout=60, interval=0.5, message="/readyz 200 again after the broker's restart")
        dev.stop()
    finally:
        dev.kill()
