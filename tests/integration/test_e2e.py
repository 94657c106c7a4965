"""End to end through `taskstream dev` as a user runs it: HTTP in, a user handler runs, HTTP out.

The stack under test is one `taskstream dev` subprocess with its own Kafka
node on free ports, started in a temporary directory that holds the
handler module it loads with ``--handlers``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from taskstream.cli.broker import JVM_OPTIONS_ENV, free_port
from tests.conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HANDLERS = """
from taskstream.executors import handler


@handler("e2e.square")
def square(payload, ctx):
    return {"square": payload["n"] ** 2, "attempt": ctx.attempt}
"""

N_TASKS = 300
PRIORITIES = ("high", "medium", "low")


def child_env() -> dict[str, str]:
    """The test's environment without TASKSTREAM_* (but the suite's JVM options): dev starts its own Kafka node,
    default prefix."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSTREAM_") or k == JVM_OPTIONS_ENV}
    env["TASKSTREAM_LOG_LEVEL"] = "WARNING"
    return env


def dev_cmd(api_port: int | None, broker_port: int, *handlers: str) -> list[str]:
    return [
        sys.executable, "-m", "taskstream.cli.main", "dev",
        *(["--port", str(api_port)] if api_port is not None else []), "--broker-port", str(broker_port),
        "--executors", "1", *[a for h in handlers for a in ("--handlers", h)],
    ]


def tail(path: Path, n: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


# ------------------------------------------------------- processes in /proc


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, None if it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[19])


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def descendants(root: int) -> dict[int, int]:
    """pid -> start time of every live descendant of ``root``."""
    parents = {}
    for pid in _pids():
        st = _stat(pid)
        if st is not None:
            parents[pid] = st
    found: dict[int, int] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, start) in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = start
                frontier.append(pid)
    return found


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line or environment contains ``text`` (our own processes only)."""
    hits = []
    needle = text.encode()
    for pid in _pids():
        if pid == os.getpid():
            continue
        for name in ("cmdline", "environ"):
            try:
                if needle in Path(f"/proc/{pid}/{name}").read_bytes() and _stat(pid) is not None:
                    hits.append(pid)
                    break
            except OSError:
                pass
    return hits


def still_alive(procs: dict[int, int]) -> list[int]:
    return [pid for pid, start in procs.items() if (st := _stat(pid)) is not None and st[1] == start]


# ---------------------------------------------------------------- tests


def test_dev_runs_user_handlers_end_to_end_and_stops_cleanly(tmp_path: Path) -> None:
    (tmp_path / "e2e_handlers.py").write_text(textwrap.dedent(HANDLERS))
    api_port, broker_port = free_port(), free_port()
    log_path = tmp_path / "dev.log"
    with open(log_path, "wb") as log:
        dev = subprocess.Popen(
            dev_cmd(None, broker_port, "e2e_handlers"),  # the API port from the environment, like any setting
            cwd=tmp_path, env={**child_env(), "TASKSTREAM_API_PORT": str(api_port)}, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{api_port}"
    family: dict[int, int] = {}
    try:
        with httpx.Client(base_url=base, timeout=10) as http:

            def ready() -> bool:
                assert dev.poll() is None, f"dev exited with {dev.returncode}:\n{tail(log_path)}"
                try:
                    return http.get("/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(ready, timeout=120, interval=0.2, message="dev's API ready")

            expected: dict[str, int] = {}
            for n in range(N_TASKS):
                r = http.post("/api/v1/tasks", json={
                    "handler": "e2e.square", "payload": {"n": n}, "priority": PRIORITIES[n % 3],
                })
                assert r.status_code == 202, r.text
                task_id = r.json()["id"]
                g = http.get(f"/api/v1/tasks/{task_id}")
                assert g.status_code == 200, g.text  # read-your-writes
                assert g.json()["priority"] == PRIORITIES[n % 3]
                expected[task_id] = n

            def all_succeeded():
                assert dev.poll() is None, f"dev exited with {dev.returncode}:\n{tail(log_path)}"
                done = {}
                cursor = None
                while True:
                    page = http.get("/api/v1/tasks", params={"status": "succeeded", "limit": 1000,
                                                             **({"cursor": cursor} if cursor else {})}).json()
                    done.update((t["id"], t) for t in page["tasks"] if t["id"] in expected)
                    cursor = page["next_cursor"]
                    if not cursor:
                        break
                failed = http.get("/api/v1/tasks", params={"status": "failed", "limit": 10}).json()["tasks"]
                assert not failed, f"tasks failed: {failed}"
                return done if len(done) == len(expected) else None

            done = wait_until(all_succeeded, timeout=120, interval=0.5, message=f"{N_TASKS} tasks succeeded")
            for task_id, n in expected.items():
                task = done[task_id]
                assert task["result"] == {"square": n * n, "attempt": task["attempt"]}, task
                assert task["attempt"] == 1
                assert task["started_at"] and task["finished_at"], task
            by_priority = {p: sum(1 for t in done.values() if t["priority"] == p) for p in PRIORITIES}
            assert by_priority == {p: N_TASKS // 3 for p in PRIORITIES}

        family = descendants(dev.pid)
        assert len(family) >= 4, f"expected broker, processor, executor and API under dev, found {family}"
        t0 = time.monotonic()
        dev.send_signal(signal.SIGTERM)
        rc = dev.wait(timeout=15)
        took = time.monotonic() - t0
        assert rc == 0, f"dev exited with {rc}:\n{tail(log_path)}"
        assert took < 15
        wait_until(lambda: not still_alive(family), timeout=3, message="dev's children gone")
        assert processes_mentioning(f"127.0.0.1:{broker_port}") == []
    finally:
        if dev.poll() is None:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait()
        for pid in still_alive(family):
            os.kill(pid, signal.SIGKILL)


def test_dev_with_a_handler_module_that_does_not_import_fails_clearly(tmp_path: Path) -> None:
    r = subprocess.run(
        dev_cmd(free_port(), free_port(), "no_such_handlers_mod"),
        cwd=tmp_path, env=child_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=150,
    )
    assert r.returncode != 0
    assert "could not import handler module 'no_such_handlers_mod'" in r.stderr, r.stderr[-3000:]
    assert "restarting" not in r.stderr, r.stderr[-3000:]
