"""The `taskstream` command as users run it: a subprocess, real broker, exit codes and messages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

import pytest
from confluent_kafka.admin import AdminClient

from taskstream.cli.broker import free_port
from taskstream.schemas import Settings, catalogue

pytestmark = pytest.mark.integration


def taskstream(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    script = shutil.which("taskstream", path=os.path.dirname(sys.executable))
    cmd = [script] if script else [sys.executable, "-m", "taskstream.cli.main"]
    return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=timeout)


def env_for(bootstrap: str, prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSTREAM_")}
    return {**env, "TASKSTREAM_BOOTSTRAP_SERVERS": bootstrap, "TASKSTREAM_PREFIX": prefix, "TASKSTREAM_PARTITIONS": "3"}


def test_help_lists_the_commands() -> None:
    r = taskstream("--help")
    assert r.returncode == 0, r.stderr
    for command in ("dev", "processor", "executor", "api", "topics", "bench"):
        assert f"  {command}" in r.stdout, r.stdout


def test_topics_create_creates_every_topic_and_is_idempotent(broker: str) -> None:
    prefix = f"cli{uuid.uuid4().hex[:8]}"
    env = env_for(broker, prefix)
    expected = {spec.name: spec.partitions for spec in catalogue(Settings(prefix=prefix, partitions=3))}

    first = taskstream("topics", "create", env=env)
    assert first.returncode == 0, first.stderr
    for name in expected:
        assert name in first.stdout
    topics = AdminClient({"bootstrap.servers": broker}).list_topics(timeout=10).topics
    assert {name: len(topics[name].partitions) for name in expected if name in topics} == expected

    second = taskstream("topics", "create", env=env)
    assert second.returncode == 0, second.stderr
    assert "problem" not in second.stderr


def test_topics_create_reports_a_partition_mismatch(broker: str) -> None:
    prefix = f"cli{uuid.uuid4().hex[:8]}"
    assert taskstream("topics", "create", env=env_for(broker, prefix)).returncode == 0
    r = taskstream("topics", "create", "--partitions", "2", env=env_for(broker, prefix))
    assert r.returncode == 1
    assert f"{prefix}.events has 3 partitions, expected 2" in r.stderr


def test_topics_create_against_an_unreachable_broker_fails_cleanly() -> None:
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    r = taskstream("topics", "create", env=env_for(closed, "unreachable"), timeout=45)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and closed in last, r.stderr[-2000:]
