"""Shared fixtures: one embedded broker per test module, a fresh topic prefix per test."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from taskstream.cli.broker import EmbeddedBroker, free_port
from taskstream.schemas import Settings, catalogue
from taskstream.schemas.kafka import ensure_topics, wait_for_broker


# Starlette's TestClient sends ``Host: testserver``; every Settings a test builds (and its subprocesses) trusts it
# besides the loopback names (README "Security": the API's Host check). Tests of the check pass trusted_hosts.
os.environ.setdefault("TASKSTREAM_TRUSTED_HOSTS", '["127.0.0.1", "localhost", "[::1]", "testserver"]')


# Wall-clock deadlines make property tests flaky on a loaded 2-core machine; the
# examples themselves are what the tests check.
hypothesis_settings.register_profile(
    "taskstream", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("taskstream")

#: Consumer-group session timeout of every stack a test builds. The embedded broker makes a group join wait about
#: half of it (BROKER.md), and every processor, executor and relay of a test joins at least once, so it is most of
#: what an integration test waits for. 2 s (heartbeats every 666 ms) keeps joins near 1 s; tests that need the
#: longer join window of production (test_group_leave) set their own.
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


@pytest.fixture(scope="module")
def broker():
    """The embedded Tansu broker on a free loopback port (or $TASKSTREAM_TEST_BOOTSTRAP), one per test module.

    A broker that holds the topics and records of every test before serves the later ones ever more slowly
    (test_processor_kill.py: 13.5 s on a fresh broker, 43 s late in a full run), and timing bounds then measure
    the broker, not our code (issue 13 item 7). A start and a stop take well under a second."""
    external = os.environ.get("TASKSTREAM_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    b = EmbeddedBroker(free_port()).start()
    try:
        yield b.bootstrap_servers
    finally:
        b.stop(timeout=0.5)  # Tansu takes its full 5 s default to honour SIGTERM; memory-only, nothing to keep


@pytest.fixture
def settings(broker, tmp_path: Path) -> Settings:
    """Settings with a topic prefix of the test's own, topics created."""
    s = Settings(
        bootstrap_servers=broker,
        prefix=f"t{uuid.uuid4().hex[:10]}",
        partitions=3,
        embedded_broker=True,
        data_dir=tmp_path / "data",
        session_timeout_ms=SESSION_TIMEOUT_MS,
        metrics_port=0,  # processes of a test serve no metrics unless the test asks (they would all want 9100)
    )
    wait_for_broker(s)
    assert ensure_topics(s, catalogue(s)) == []
    return s
