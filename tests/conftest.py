"""Shared fixtures: one Apache Kafka node per test session (per xdist worker), a fresh topic prefix per test (its
topics made ahead of time by a helper process, deleted after)."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from taskstream.cli.broker import FREE_PORTS_ENV, JVM_OPTIONS_ENV, KafkaBroker, _free_port_range, free_port
from taskstream.schemas import Settings, catalogue
from taskstream.schemas.kafka import admin, ensure_topics, wait_for_broker

# Every Kafka node of the session (the workers' nodes, the clusters of the fault tests, dev stacks that keep the
# environment) compiles with C1 only and collects with the serial GC: a node lives minutes, and compiling with C2
# was about half of its CPU (docs/benchmarks/2026-12-07-test-broker-jvm.md).
os.environ.setdefault(JVM_OPTIONS_ENV, "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
# Each pytest-xdist worker (and every process it starts) draws the ports of the servers it starts from a slice of
# its own, so two workers never pick the same port at once (cli/broker.py, free_port).
if os.environ.get("PYTEST_XDIST_WORKER") and FREE_PORTS_ENV not in os.environ:
    _span = _free_port_range()
    if _span is not None:
        _worker, _workers = int(os.environ["PYTEST_XDIST_WORKER"].removeprefix("gw")), int(
            os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        _width = (_span[1] - _span[0]) // _workers
        os.environ[FREE_PORTS_ENV] = f"{_span[0] + _worker * _width}-{_span[0] + (_worker + 1) * _width - 1}"
# Starlette's TestClient sends ``Host: testserver``; every Settings a test builds (and its subprocesses) trusts it
# besides the loopback names (docs/security.md: the API's Host check). Tests of the check pass trusted_hosts.
os.environ.setdefault("TASKSTREAM_TRUSTED_HOSTS", '["127.0.0.1", "localhost", "[::1]", "testserver"]')


# Wall-clock deadlines make property tests flaky on a loaded 2-core machine; the
# examples themselves are what the tests check.
hypothesis_settings.register_profile(
    "taskstream", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("taskstream")

@contextmanager
def _turn(folder: Path, alone: bool) -> Iterator[None]:
    """A test's turn among the pytest-xdist workers of one run: a shared lock on ``folder/turns.lock``, exclusive
    for a test that runs ``alone``. An ``alone`` test holds the gate while it waits and runs, so the other workers'
    next tests wait behind it rather than slipping in between."""
    with open(folder / "turns.gate", "a") as gate, open(folder / "turns.lock", "a") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            if not alone:
                fcntl.flock(gate, fcntl.LOCK_UN)
        yield  # the locks go with the files


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Under pytest-xdist (``make test``), a test marked ``alone`` runs while no other worker runs a test: for
    tests that measure wall-clock bounds a second test on this 2-core machine would blur."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run is None:
        return (yield)
    folder = Path(tempfile.gettempdir()) / f"taskstream-test-turns-{run}"
    folder.mkdir(exist_ok=True)
    with _turn(folder, item.get_closest_marker("alone") is not None):
        return (yield)


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

    One node serves the whole session (under pytest-xdist, each worker's session has a node of its own, on its
    own port and directory): each test has its own topic prefix and its topics are deleted after it."""
    external = os.environ.get("TASKSTREAM_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    b = KafkaBroker(free_port(), tmp_path_factory.mktemp("kafka")).start(timeout=120)
    try:
        yield b.bootstrap_servers
    finally:
        b.stop()


def _topic_set_settings(bootstrap_servers: str, prefix: str) -> Settings:
    return Settings(bootstrap_servers=bootstrap_servers, prefix=prefix, partitions=3)


def _make_topic_set(bootstrap_servers: str) -> str:
    s = _topic_set_settings(bootstrap_servers, f"t{uuid.uuid4().hex[:10]}")
    wait_for_broker(s)
    problems = ensure_topics(s, catalogue(s))
    assert problems == [], problems
    return s.prefix


def _delete_topic_set(bootstrap_servers: str, prefix: str) -> None:
    delete_topics(_topic_set_settings(bootstrap_servers, prefix))


class TopicSets:
    """The test catalogue's topics under fresh prefixes, made ``ahead`` tests in advance by a helper process.

    A new set is 39 partitions that the node brings up in about a second (several on a loaded machine): made
    while the previous test runs, a test's ``settings`` rarely waits for it. ``take()`` returns a prefix whose
    topics exist and are usable (``ensure_topics`` found nothing to report), or raises what making them raised;
    deletions run in the same process, in order. A process of its own (spawned, not forked), not a thread: its
    Kafka clients are invisible to a test that records every client its own process makes. ``close()`` deletes
    the sets nobody took."""

    def __init__(self, bootstrap_servers: str, ahead: int = 2) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.ahead = ahead
        self._helper = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        self._made: deque[Future[str]] = deque()

    def take(self) -> str:
        while len(self._made) <= self.ahead:
            self._made.append(self._helper.submit(_make_topic_set, self.bootstrap_servers))
        return self._made.popleft().result()

    def delete(self, prefix: str) -> None:
        """Delete the topics under ``prefix`` in the helper process (the test does not wait for it)."""
        self._helper.submit(_delete_topic_set, self.bootstrap_servers, prefix)

    def close(self) -> None:
        for made in self._made:
            if made.exception() is None:
                self.delete(made.result())
        self._helper.shutdown(wait=True)


@pytest.fixture(scope="session")
def topic_sets(broker):
    sets = TopicSets(broker)
    try:
        yield sets
    finally:
        sets.close()


@pytest.fixture
def settings(broker, topic_sets: TopicSets, tmp_path: Path) -> Settings:
    """Settings with a topic prefix of the test's own, topics created (and deleted after the test)."""
    s = Settings(
        bootstrap_servers=broker,
        prefix=topic_sets.take(),
        partitions=3,
        data_dir=tmp_path / "data",
        session_timeout_ms=SESSION_TIMEOUT_MS,
        metrics_port=0,  # processes of a test serve no metrics unless the test asks (they would all want 9100)
        # Tests that read a task's events expect a quick handler to report its result only; at the 0.1 s default a
        # loaded machine makes "quick" take longer and adds a TaskStarted. Tests of the started event set their own
        # (test_executor.py), and whole stacks (live_stack.py, test_running_status.py) run with the default.
        started_event_after_s=1.0,
    )
    yield s
    topic_sets.delete(s.prefix)


def delete_topics(s: Settings) -> None:
    """Delete every topic under ``s.prefix`` (without waiting): a session's broker stays small."""
    try:
        client = admin(s)
        names = [t for t in client.list_topics(timeout=5).topics if t.startswith(s.prefix + ".")]
        if names:
            client.delete_topics(names, operation_timeout=5)
    except Exception:  # the test stopped the broker, or it is gone: nothing to tidy
        pass
