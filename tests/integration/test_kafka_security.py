"""The whole stack on a Kafka node that enforces security: SASL_SSL, SCRAM-SHA-512 and ACLs, one principal each.

A node of this module's own (``ListenerSecurity``): TLS from a CA the test makes (``tests/tls.py``), SCRAM
users ``admin`` (the super user), ``api``, ``processor`` and ``executor`` created when its directory is formatted,
KRaft's ``StandardAuthorizer`` with nothing allowed but what an ACL says. The topics are made and the ACLs
applied as ``admin`` (`taskstream acls apply`), then processor, executor and API run
as subprocesses, each as its own user. Then:

- a task with a dependency succeeds, and so do a retried task (the relay), a failing one (the dlq) and one long
  enough to heartbeat; no component logs an authorization error;
- least privilege bites: the executor cannot write ``<p>.admin`` nor read ``<p>.events``, the API cannot write a
  ready topic, the processor cannot write ``<p>.admin``;
- a wrong password, and a CA that did not sign the broker's certificate, each stop every component at start with
  one line naming the cause, not a traceback.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from confluent_kafka import KafkaError, TopicPartition

from taskstream.cli.broker import KafkaBroker, ListenerSecurity, free_port
from taskstream.cli.dev import settings_env
from taskstream.schemas import Settings, Topics, catalogue, kafka
from taskstream.schemas.acls import Principals, acls
from taskstream.schemas.kafka import apply_acls, cluster_acls, ensure_topics
from tests.conftest import SESSION_TIMEOUT_MS, wait_until
from tests.integration.live_stack import Proc
from tests.kafka_helpers import stop_all
from tests.tls import make_pki

pytestmark = pytest.mark.integration

USERS = ("admin", "api", "processor", "executor")
HANDLERS = '''\
from taskstream.executors import PermanentError, handler


@handler("flaky")
def flaky(payload, ctx):
    if ctx.attempt == 1:
        raise RuntimeError("the first attempt fails")
    return {"attempt": ctx.attempt}


@handler("fail")
def fail(payload, ctx):
    raise PermanentError("planned failure")
'''


class SecureNode:
    """The module's node and what a client needs to talk to it as each user."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pki = make_pki(folder / "pki")
        self.passwords = {user: secrets.token_hex(12) for user in USERS}
        self.security = ListenerSecurity(keystore=self.pki.keystore, truststore=self.pki.ca, users=self.passwords)
        self.broker = KafkaBroker(free_port(), folder / "kafka", security=self.security)

    def settings(self, user: str, prefix: str, **fields) -> Settings:
        return self.broker.client_settings(user, prefix=prefix, partitions=3, data_dir=self.folder / prefix / user,
                                           session_timeout_ms=SESSION_TIMEOUT_MS, metrics_port=0,
                                           log_level="INFO", **fields)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    n = SecureNode(tmp_path_factory.mktemp("secure-kafka"))
    n.broker.start(timeout=120)
    try:
        yield n
    finally:
        n.broker.stop()


def taskstream(settings: Settings, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "taskstream.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, **settings_env(settings)}, timeout=timeout)


@pytest.fixture(scope="module")
def prefix(node: SecureNode) -> str:
    """A topic prefix whose topics the admin made, with the ACLs `taskstream acls apply` made (as the admin)."""
    p = f"sec{secrets.token_hex(4)}"
    admin = node.settings("admin", p)
    assert ensure_topics(admin, catalogue(admin)) == []
    principals = ["--principal-api", "User:api", "--principal-processor", "User:processor",
                  "--principal-executor", "User:executor"]
    done = taskstream(admin, "acls", "apply", *principals)
    assert done.returncode == 0, done.stderr
    wanted = acls(Topics(p), Principals(api="User:api", processor="User:processor", executor="User:executor"))
    assert f"{len(wanted)} ACLs created, 0 already there" in done.stderr, done.stderr
    assert apply_acls(admin, wanted) == []  # idempotent: a second apply creates nothing
    return p


def test_the_stack_runs_with_one_least_privileged_principal_per_component(node: SecureNode, prefix: str,
                                                                          tmp_path: Path) -> None:
    (tmp_path / "securehandlers.py").write_text(HANDLERS)
    port = free_port()
    each = {"api_port": port, "heartbeat_interval_s": 0.3, "started_event_after_s": 0.2}
    procs = [
        Proc(node.settings("processor", prefix, **each), "processor", cwd=tmp_path, log=tmp_path / "processor.log"),
        Proc(node.settings("executor", prefix, **each), "executor", "--handlers", "securehandlers", cwd=tmp_path,
             log=tmp_path / "executor.log"),
        Proc(node.settings("api", prefix, **each), "api", "--port", str(port), cwd=tmp_path, log=tmp_path / "api.log"),
    ]
    url = f"http://127.0.0.1:{port}"

    def logs() -> str:
        return "\n".join(f"--- {f.name}\n{f.read_text()[-3000:]}" for f in sorted(tmp_path.glob("*.log")))

    def alive() -> None:
        for p in procs:
            assert p.alive(), f"{p.proc.args[3:]} exited with {p.proc.returncode}\n{logs()}"

    def ready() -> bool:
        alive()
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, timeout=60, interval=0.2, message="the API ready")
        post = lambda body: httpx.post(f"{url}/api/v1/tasks", json=body, timeout=10)  # noqa: E731
        first = post({"handler": "noop"})
        assert first.status_code == 202, first.text
        second = post({"handler": "noop", "depends_on": [first.json()["id"]]})
        assert second.status_code == 202, second.text
        others = [post(body).json()["id"] for body in (
            {"handler": "flaky", "retry": {"max_attempts": 2, "backoff": {"initial_s": 0.1, "jitter": 0}}},
            {"handler": "fail"},
            {"handler": "sleep", "payload": {"seconds": 1.2}},
        )]

        def status(task_id: str) -> str:
            alive()
            return httpx.get(f"{url}/api/v1/tasks/{task_id}", timeout=5).json()["status"]

        wait_until(lambda: status(second.json()["id"]) == "succeeded", timeout=60, interval=0.2,
                   message="the dependent task to succeed")
        wait_until(lambda: [status(i) for i in others] == ["succeeded", "failed", "succeeded"], timeout=60,
                   interval=0.2, message="the retried, failing and heartbeating tasks to finish")
        kinds = [e["type"] for e in httpx.get(f"{url}/api/v1/tasks/{others[0]}/events", timeout=5).json()["events"]]
        assert "TaskRetryScheduled" in kinds, kinds
        cluster = httpx.get(f"{url}/api/v1/cluster", timeout=10).json()
        states = {g["role"]: g["state"] for g in cluster["groups"]}
        assert states.get("processor") == "stable" and states.get("executors") == "stable", cluster["groups"]
    finally:
        stop_all(*reversed(procs))
        for p in procs:
            p.log.close()
    text = logs().lower()
    assert "authoriz" not in text and "denied" not in text, logs()


def _produce(settings: Settings, topic: str) -> KafkaError | None:
    producer = kafka.producer(settings, "taskstream-test-denied")
    result: list[KafkaError | None] = []
    producer.produce(topic, b"x", b"k", on_delivery=lambda err, msg: result.append(err))
    producer.flush(30)
    return result[0] if result else KafkaError(KafkaError._TIMED_OUT)


def _read(settings: Settings, topic: str) -> KafkaError | None:
    consumer = kafka.reader(settings, "taskstream-test-denied", f"{settings.prefix}-test-denied")
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is not None:
                return msg.error()
        return None
    finally:
        consumer.close()


@pytest.mark.parametrize(("user", "write", "topic"), [
    ("executor", True, "admin"), ("processor", True, "admin"), ("api", True, "admin"),
    ("api", True, "ready.high"), ("executor", True, "state"), ("executor", False, "events"),
], ids=lambda v: str(v))
def test_least_privilege_bites(node: SecureNode, prefix: str, user: str, write: bool, topic: str) -> None:
    settings = node.settings(user, prefix)
    name = f"{prefix}.{topic}"
    err = _produce(settings, name) if write else _read(settings, name)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err


def test_the_admin_alone_may_write_the_admin_topic(node: SecureNode, prefix: str) -> None:
    assert _produce(node.settings("admin", prefix), Topics(prefix).admin) is None  # the check above can pass
    writers = {a.principal for a in cluster_acls(node.settings("admin", prefix))
               if a.operation == "write" and Topics(prefix).admin.startswith(a.name)}
    assert writers == set()


@pytest.mark.parametrize("component", ["processor", "executor", "api"])
@pytest.mark.parametrize("fault", ["wrong password", "untrusted certificate"])
def test_a_refused_credential_stops_the_start_with_one_line_naming_it(node: SecureNode, prefix: str,
                                                                     tmp_path: Path, component: str,
                                                                     fault: str) -> None:
    if fault == "wrong password":
        settings = node.settings(component, prefix, kafka_sasl_password="not-" + node.passwords[component])
        expected = f"refused the SASL credentials of user '{component}'"
    else:
        other = make_pki(tmp_path / "other", "another")
        settings = node.settings(component, prefix, kafka_ssl_ca_location=other.ca)
        expected = "the broker's certificate is not trusted"
    args = [component, "--port", str(free_port())] if component == "api" else [component]
    started = time.monotonic()
    done = taskstream(settings, *args, timeout=60)
    took = time.monotonic() - started
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0, done.stderr
    assert lines and expected in lines[-1] and lines[-1].startswith("Error: "), done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert took < 30, f"{component} took {took:.1f} s to give up"
