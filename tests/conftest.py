"""Shared fixtures: one Apache Kafka node per test session, a fresh topic prefix per test (its topics deleted after)."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from taskstream.cli.broker import KafkaBroker, free_port
from taskstream.schemas import Settings, catalogue
from taskstream.schemas.kafka import admin, ensure_topics, wait_for_broker

# Starlette's TestClient sends ``Host: testserver``; every Settings a test builds (and its subprocesses) trusts it
# besides the loopback names (docs/security.md: the API's Host check). Tests of the check pass trusted_hosts.
os.environ.setdefault("TASKSTREAM_TRUSTED_HOSTS", '["127.0.0.1", "localhost", "[::1]", "testserver"]')


# Wall-clock deadlines make property tests flaky on a loaded 2-core machine; the
# examples themselves are what the tests check.
hypothesis_settings.register_profile(
    "taskstream", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("taskstream")

#: Consumer-group session timeout of every stack a test builds (heartbeats every third of it). Short, so that a
#: test that kills a member sees its partitions move within seconds; the test broker allows down to 1 s.
SESSION_TIMEOUT_MS = int(os.environ.get("TASKSTREAM_TEST_SESSION_TIMEOUT_MS", "2000"))


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, message: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """Bootstrap servers of the session's Kafka node (KRaft, 127.0.0.1, a free port), or $TASKSTREAM_TEST_BOOTSTRAP.

    One node serves the whole session: each test has its own topic prefix and its topics are deleted after it."""
    external = os.environ.get("TASKSTREAM_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    b = KafkaBroker(free_port(), tmp_path_factory.mktemp("kafka")).start(timeout=120)
    try:
        yield b.bootstrap_servers
    finally:
        b.stop()


@pytest.fixture
def settings(broker, tmp_path: Path) -> Settings:
    """Settings with a topic prefix of the test's own, topics created (and deleted after the test)."""
    s = Settings(
        bootstrap_servers=broker,
        prefix=f"t{uuid.uuid4().hex[:10]}",
        partitions=3,
        data_dir=tmp_path / "data",
        session_timeout_ms=SESSION_TIMEOUT_MS,
        metrics_port=0,  # processes of a test serve no metrics unless the test asks (they would all want 9100)
    )
    wait_for_broker(s)
    assert ensure_topics(s, catalogue(s)) == []
    yield s
    delete_topics(s)


def delete_topics(s: Settings) -> None:
    """Delete every topic under ``s.prefix`` (without waiting): a session's broker stays small."""
    try:
        client = admin(s)
        names = [t for t in client.list_topics(timeout=5).topics if t.startswith(s.prefix + ".")]
        if names:
            client.delete_topics(names, operation_timeout=5)
    except Exception:  # the test stopped the broker, or it is gone: nothing to tidy
        pass
