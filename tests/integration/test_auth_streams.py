"""Revocation reaches open streams (issue 25): an SSE watch or a gRPC watch of a revoked API key or an expired JWT
ends within the staleness bound, on the real broker (keys through ``<p>.admin``, as the CLI writes them)."""

from __future__ import annotations

import json
import threading
import time

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from taskstream.api import create_app
from taskstream.api.revalidate import RECHECK_S
from taskstream.cli.broker import free_port
from taskstream.cli.keys import create_key, revoke_key
from taskstream.grpc.v1 import tasks_pb2, tasks_pb2_grpc
from taskstream.schemas import Settings
from tests.integration.test_auth import key_ready, secured, token

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def signer():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def sse_until_error(client: TestClient, headers: dict, timeout: float) -> tuple[dict, float]:
    """Open the filtered watch; return its ``event: error`` problem and when it arrived (monotonic)."""
    with client.stream("GET", "/api/v1/tasks/watch", headers=headers, timeout=timeout) as r:
        assert r.status_code == 200, r.read()
        event = None
        deadline = time.monotonic() + timeout
        for line in r.iter_lines():
            assert time.monotonic() < deadline, "the watch did not end"
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "error":
                return json.loads(line.split(":", 1)[1]), time.monotonic()
    raise AssertionError("the watch ended without an error event")


def test_an_sse_watch_ends_when_its_api_key_is_revoked(settings: Settings, signer) -> None:
    s = secured(settings, signer, watch_heartbeat_s=0.2)
    key, record = create_key(s, "reader", "watcher", [])
    app = create_app(s)
    with TestClient(app) as c:
        key_ready(app, key)
        revoked_at: list[float] = []

        def revoke_soon() -> None:
            time.sleep(0.5)  # the watch is open by then; nothing to await from this thread
            revoke_key(s, record.key_id)
            key_ready(app, key, live=False)
            revoked_at.append(time.monotonic())

        t = threading.Thread(target=revoke_soon)
        t.start()
        problem, ended = sse_until_error(c, {"X-API-Key": key}, timeout=s.auth_api_key_max_staleness_s + 10)
        t.join()
    assert problem["status"] == 401 and problem["type"].endswith(":unauthorized"), problem
    assert "revoked" in problem["detail"]
    assert ended - revoked_at[0] <= RECHECK_S + 1.0, ended - revoked_at[0]


def test_an_sse_watch_ends_when_its_jwt_expires(settings: Settings, signer) -> None:
    s = secured(settings, signer, watch_heartbeat_s=0.2, auth_jwt_leeway_s=0.0)
    jwt = token(signer, "reader", minutes=3 / 60)  # expires in 3 s
    expires = time.monotonic() + 3
    with TestClient(create_app(s)) as c:
        problem, ended = sse_until_error(c, {"Authorization": f"Bearer {jwt}"}, timeout=20)
    assert problem["status"] == 401, problem
    assert ended - expires <= RECHECK_S + 1.0, ended - expires


def test_a_grpc_watch_ends_when_its_api_key_is_revoked(settings: Settings, signer) -> None:
    s = secured(settings, signer, grpc_port=free_port())
    key, record = create_key(s, "reader", "grpc-watcher", [])
    app = create_app(s)
    with TestClient(app), grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as channel:
        key_ready(app, key)
        stream = tasks_pb2_grpc.TaskServiceStub(channel).WatchTasks(
            tasks_pb2.WatchTasksRequest(), metadata=(("x-api-key", key),), timeout=30)
        first = next(stream)  # the starting position: the stream is open and admitted
        assert first.cursor
        revoke_key(s, record.key_id)
        key_ready(app, key, live=False)
        revoked = time.monotonic()
        with pytest.raises(grpc.RpcError) as ended:
            for _ in stream:
                pass
        assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED, ended.value
        assert time.monotonic() - revoked <= RECHECK_S + 1.0
