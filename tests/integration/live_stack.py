"""A whole taskstream stack for client and CLI tests: processor, executor and API as subprocesses.

One stack per test module (module-scoped fixtures), on the session's
Kafka node with a topic prefix of its own. The executor loads
``clienthandlers`` (written to the stack's folder) besides the built-ins:
``fail`` raises ``PermanentError`` (the task fails at once, no retries);
``hold`` writes the wall time it started to ``held/<task id>`` in the
stack's folder and returns once ``release/<task id>`` exists (30 s at most);
``modules`` adds handler modules of a test's own (name -> source); ``env`` adds variables to the three
processes' environment (an OTLP endpoint, say).
The API is served over real HTTP on a free loopback port (``url``), so
clients and console scripts talk to it as users do.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from taskstream.cli.broker import free_port
from taskstream.cli.dev import settings_env
from taskstream.schemas import Settings, catalogue
from taskstream.schemas.kafka import ensure_topics, wait_for_broker
from tests.conftest import SESSION_TIMEOUT_MS, wait_until
from tests.kafka_helpers import stop_all

HANDLERS = '''\
from taskstream.executors import PermanentError, handler


@handler("fail")
def fail(payload, ctx):
    raise PermanentError((payload or {}).get("message", "planned failure"))

@handler("hold")
def hold(payload, ctx):
    import os, time
    os.makedirs("held", exist_ok=True)
    with open(f"held/{ctx.task_id}.tmp", "w") as f:
        f.write(repr(time.time()))
    os.replace(f"held/{ctx.task_id}.tmp", f"held/{ctx.task_id}")
    deadline = time.monotonic() + 30
    while not os.path.exists(f"release/{ctx.task_id}") and time.monotonic() < deadline and not ctx.cancelled:
        time.sleep(0.01)
    return {"held": True}
'''


class Proc:
    """A ``taskstream <args>`` subprocess in ``cwd`` with ``settings`` (and ``env``) in its environment; output to
    ``log``."""

    def __init__(self, settings: Settings, *args: str, cwd: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.log = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "taskstream.cli.main", *args],
                                     env={**os.environ, **settings_env(settings), **(env or {})}, cwd=cwd,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


class LiveStack:
    """Processor + executor + API on ``broker``; ``url`` is the API's base URL."""

    def __init__(self, broker: str, folder: Path, modules: dict[str, str] | None = None, grpc: bool = False,
                 env: dict[str, str] | None = None) -> None:
        self.folder = folder
        port = free_port()
        self.settings = Settings(bootstrap_servers=broker, prefix=f"t{uuid.uuid4().hex[:10]}", partitions=3,
                                 data_dir=folder / "data", session_timeout_ms=SESSION_TIMEOUT_MS,
                                 log_level="WARNING", metrics_port=0, api_port=port,
                                 grpc_port=free_port() if grpc else None)
        self.url = f"http://127.0.0.1:{port}"
        wait_for_broker(self.settings)
        assert ensure_topics(self.settings, catalogue(self.settings)) == []
        (folder / "clienthandlers.py").write_text(HANDLERS)
        extra: list[str] = []
        for name, source in (modules or {}).items():
            (folder / f"{name}.py").write_text(source)
            extra += ["--handlers", name]
        self.procs = [
            Proc(self.settings, "processor", cwd=folder, log=folder / "processor.log", env=env),
            Proc(self.settings, "executor", "--handlers", "clienthandlers", *extra, "--concurrency", "8", cwd=folder,
                 log=folder / "executor.log", env=env),
            Proc(self.settings, "api", "--port", str(port), cwd=folder, log=folder / "api.log", env=env),
        ]

    def env(self) -> dict[str, str]:
        """An environment for a console script that talks to this stack (and no other TASKSTREAM_ setting)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSTREAM_")}
        return {**env, "TASKSTREAM_URL": self.url, "NO_COLOR": "1", "COLUMNS": "200"}

    def check(self) -> None:
        for p in self.procs:
            if not p.alive():
                logs = "\n".join(f"--- {f.name}\n{f.read_text()[-2000:]}" for f in sorted(self.folder.glob("*.log")))
                raise AssertionError(f"{p.proc.args[3:]} exited with {p.proc.returncode}\n{logs}")

    def wait_ready(self, timeout: float = 60) -> LiveStack:
        def ready() -> bool:
            self.check()
            try:
                return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout=timeout, interval=0.2, message="the API ready")
        # the executor has joined its group once a task runs
        task = httpx.post(f"{self.url}/api/v1/tasks", json={"handler": "noop"}, timeout=10).json()
        wait_until(lambda: self.check() or httpx.get(f"{self.url}/api/v1/tasks/{task['id']}", timeout=5)
                   .json()["status"] == "succeeded", timeout=timeout, interval=0.2, message="a warm-up task to succeed")
        return self

    def stop(self) -> None:
        stop_all(*reversed(self.procs))  # API, executor and processor at once (tests/kafka_helpers.py)
        for p in self.procs:
            p.log.close()
