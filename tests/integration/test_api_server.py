"""``run_api`` serves over real HTTP (uvicorn) and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from taskstream.cli.broker import free_port
from taskstream.schemas import Settings
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


def test_run_api_serves_and_stops_on_sigterm(settings: Settings, tmp_path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "TASKSTREAM_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "TASKSTREAM_PREFIX": settings.prefix,
        "TASKSTREAM_PARTITIONS": str(settings.partitions),
        "TASKSTREAM_DATA_DIR": str(tmp_path / "server"),
        "TASKSTREAM_API_PORT": str(port),
    }
    code = "from taskstream.api import run_api; from taskstream.schemas import Settings; run_api(Settings())"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
            return False

    try:
        wait_until(up, timeout=20, message="API ready over HTTP")
        r = httpx.post(f"{base}/api/v1/tasks", json={"handler": "noop"}, timeout=10)
        assert r.status_code == 202
        got = httpx.get(f"{base}/api/v1/tasks/{r.json()['id']}", timeout=5)
        assert got.status_code == 200
        head = httpx.head(f"{base}/api/v1/tasks/{r.json()['id']}", timeout=5)
        assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == \
            str(len(got.content))
        watch = httpx.head(f"{base}/api/v1/tasks/watch", timeout=5)  # a stream: HEAD ends after its headers
        assert watch.status_code == 200 and watch.headers["content-type"].startswith("text/event-stream")
        big = httpx.post(f"{base}/api/v1/tasks", content=b"x" * (settings.max_body_bytes + 1),
                         headers={"content-type": "application/json"}, timeout=10)
        assert big.status_code == 413
        proc.send_signal(signal.SIGTERM)
        # uvicorn drains, runs the lifespan shutdown, then re-raises the signal it captured
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = proc.stdout.read().decode(errors="replace")
    assert "Application shutdown complete" in out, out
