"""`taskstream keys create|list|revoke` through the console script against the test Kafka node, and a
running API (in this process) that accepts a created key and refuses it once revoked; `taskstream api`
refuses a non-loopback address without authentication."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from taskstream.api import create_app
from taskstream.cli.broker import free_port
from taskstream.cli.dev import auth_hint, settings_env
from taskstream.schemas import Settings
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


def _cli() -> list[str]:
    script = shutil.which("taskstream", path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, "-m", "taskstream.cli.main"]


def taskstream(settings: Settings, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSTREAM_")}
    return subprocess.run([*_cli(), *args], env={**env, **settings_env(settings)}, capture_output=True, text=True,
                          timeout=timeout)


def test_keys_create_list_revoke_and_a_running_api_follows(settings: Settings) -> None:
    s = settings.model_copy(update={"auth_api_keys": True})
    created = taskstream(s, "keys", "create", "--role", "operator", "--name", "ci", "--json")
    assert created.returncode == 0, created.stderr
    made = json.loads(created.stdout)
    key, key_id = made["key"], made["id"]
    assert key.startswith(f"tsk_{key_id}_") and made["role"] == "operator" and made["revoked_at"] is None
    plain = taskstream(s, "keys", "create", "--role", "submitter", "--name", "dash", "--handler", "email.*")
    assert plain.returncode == 0 and plain.stdout.startswith("tsk_") and "not shown again" in plain.stderr

    listed = taskstream(s, "keys", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["name"], r["role"], r["handlers"]) for r in rows] == [("ci", "operator", []),
                                                                     ("dash", "submitter", ["email.*"])]
    assert key not in listed.stdout and "secret_hash" not in listed.stdout  # never the key nor its hash

    app = create_app(s)
    with TestClient(app) as c:
        wait_until(lambda: c.get("/api/v1/tasks", headers={"X-API-Key": key}).status_code == 200, timeout=15,
                   message="the created key to work")
        assert c.delete("/api/v1/tasks/" + "0" * 32, headers={"X-API-Key": key}).status_code == 404  # operator
        revoked = taskstream(s, "keys", "revoke", key_id)
        assert revoked.returncode == 0 and f"revoked {key_id}" in revoked.stdout, revoked.stderr
        wait_until(lambda: c.get("/api/v1/tasks", headers={"X-API-Key": key}).status_code == 401,
                   timeout=s.auth_api_key_max_staleness_s + 5, message="the revoked key to be refused")
    after = taskstream(s, "keys", "list")
    assert after.returncode == 0
    line = next(li for li in after.stdout.splitlines() if li.startswith(key_id))
    assert "revoked" in line and "operator" in line


def test_keys_commands_fail_in_one_line(settings: Settings) -> None:
    unknown = taskstream(settings, "keys", "revoke", "0123456789abcdef")
    assert unknown.returncode == 1 and "no API key with id" in unknown.stderr
    bad_role = taskstream(settings, "keys", "create", "--role", "root", "--name", "x")
    assert bad_role.returncode == 2 and "root" in bad_role.stderr
    down = Settings(bootstrap_servers=f"127.0.0.1:{free_port()}", prefix="unreachable")
    r = taskstream(down, "keys", "list", "--timeout", "2")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"Error: no Kafka broker answered at {down.bootstrap_servers}"), r.stderr


def test_api_command_refuses_a_non_loopback_address_without_auth(settings: Settings) -> None:
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: even a regression could not listen beyond loopback
    r = taskstream(settings.model_copy(update={"api_port": free_port()}), "api", "--host", "192.0.2.1", timeout=30)
    assert r.returncode == 1 and "refusing to serve the API on 192.0.2.1" in r.stderr
    assert "TASKSTREAM_AUTH_API_KEYS" in r.stderr


def test_dev_says_how_to_turn_keys_on(settings: Settings) -> None:
    off = auth_hint(settings)
    assert "TASKSTREAM_AUTH_API_KEYS=true" in off and "keys create" in off and settings.bootstrap_servers in off
    on = auth_hint(settings.model_copy(update={"auth_api_keys": True}))
    assert on.startswith("auth: API keys required")
