"""A run of the whole stack in one process with marked values: what reaches the logs and what the clients carry.

Processor (with its relay), an executor, the API and a CLI command run against the test Kafka node with SASL
credentials in the settings (the broker is plaintext: ``security.protocol`` stays PLAINTEXT, librdkafka ignores the
SASL properties), while the factory's client classes are wrapped to record every config. Tasks carry marker strings
in their payloads and results (and in a user handler's error text). Then:

- no log line at INFO or above holds a payload, result or secret marker;
- every Kafka client the run created carries the configured SASL properties.
"""

from __future__ import annotations

import io
import logging
import threading

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from pydantic import SecretStr

from taskstream.api.app import create_app
from taskstream.cli.dev import settings_env
from taskstream.cli.main import main as cli
from taskstream.executors import PermanentError, Registry
from taskstream.schemas import Settings, kafka
from taskstream.schemas.observability import log_handler
from taskstream.streams.processor import Processor
from tests.conftest import wait_until
from tests.integration.test_executor import running

pytestmark = pytest.mark.integration

PAYLOAD = "PAYLOAD-MARK-1b7e"
RESULT = "RESULT-MARK-93d0"
ERROR = "ERRTEXT-MARK-5c21"
SECRET = "SECRET-MARK-e6f4"
TERMINAL = {"succeeded", "failed", "cancelled", "upstream_failed"}


@pytest.fixture
def recorded(monkeypatch) -> list[dict]:
    seen: list[dict] = []
    for kind, cls in list(kafka.CLIENT_CLASSES.items()):
        def make(config, cls=cls):
            seen.append(config)
            return cls(config)
        monkeypatch.setitem(kafka.CLIENT_CLASSES, kind, make)
    return seen


@pytest.fixture
def captured():
    """Every record at INFO or above, as JSON lines, from every logger."""
    stream = io.StringIO()
    handler = log_handler(Settings(log_format="json"), stream)
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)  # DEBUG records are made (and may hold full error text) but not captured
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def test_no_payload_result_or_secret_in_logs_and_every_client_carries_sasl(settings: Settings, recorded, captured,
                                                                           tmp_path) -> None:
    s = settings.model_copy(update={
        "kafka_security_protocol": "PLAINTEXT", "kafka_sasl_mechanism": "SCRAM-SHA-256",
        "kafka_sasl_username": "taskstream", "kafka_sasl_password": SecretStr(SECRET),
        "schema_registry_password": SecretStr(SECRET), "http_allowed_hosts": ["api.example.com"],
    })
    registry = Registry()

    @registry.handler("sec.fail")
    def fail(payload, ctx):
        raise ValueError(f"{ERROR}: cannot handle {payload['v']}")

    @registry.handler("sec.fail.permanent")
    def fail_permanently(payload, ctx):
        raise PermanentError(f"{ERROR}: refused {payload['v']}")

    @registry.handler("sec.result")
    def result(payload, ctx):
        return {"out": RESULT, "in": payload["v"]}

    processor = Processor(s, member_id="sec-processor")
    stop = threading.Event()
    proc_thread = threading.Thread(target=processor.run, args=(stop,), name="sec-processor", daemon=True)
    proc_thread.start()
    once = {"max_attempts": 1}
    tasks = [
        {"handler": "echo", "payload": {"v": PAYLOAD}},
        {"handler": "sec.result", "payload": {"v": PAYLOAD}},
        {"handler": "sec.fail", "payload": {"v": PAYLOAD}, "retry": once},
        {"handler": "sec.fail.permanent", "payload": {"v": PAYLOAD}},
        {"handler": "sleep", "payload": {"seconds": PAYLOAD}},
        {"handler": "http", "payload": {"url": f"http://{PAYLOAD}.example.com/", "headers": {"X": PAYLOAD}}},
        {"handler": "shell", "payload": {"argv": ["echo", PAYLOAD]}},
        {"handler": "sec.unknown", "payload": {"v": PAYLOAD}, "retry": once},
    ]
    try:
        with running(s, registry=registry, executor_id="sec-executor"), TestClient(create_app(s)) as client:
            ids = []
            for t in tasks:
                r = client.post("/api/v1/tasks", json=t)
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])

            def finished():
                states = [client.get(f"/api/v1/tasks/{i}").json() for i in ids]
                return states if all(st.get("status") in TERMINAL for st in states) else None

            states = wait_until(finished, timeout=120, message="every task terminal")
            assert [st["status"] for st in states[:2]] == ["succeeded", "succeeded"]
            assert all(st["status"] == "failed" for st in states[2:]), states
            assert RESULT in str(states[1]["result"])  # the marked values did go through
            assert client.get(f"/api/v1/tasks/{ids[0]}/events").status_code == 200
            assert client.get("/api/v1/stats").status_code == 200
            assert client.get("/api/v1/cluster").status_code == 200
            # the built-ins' errors quote no payload value
            for st in states[4:7]:
                assert PAYLOAD not in (st.get("error") or ""), st
        out = CliRunner().invoke(cli, ["dlq", "list", "--json"], env=settings_env(s))
        assert out.exit_code == 0, out.output
    finally:
        stop.set()
        proc_thread.join(30)

    logs = captured.getvalue()
    for marker in (PAYLOAD, RESULT, ERROR, SECRET):
        assert marker not in logs, [line for line in logs.splitlines() if marker in line][:3]
    assert "handler sec.fail failed (ValueError)" in logs  # the capture works and saw the failures

    ids = {c["client.id"] for c in recorded}
    for expected in ("sec-processor", "sec-processor-heartbeats", "sec-processor-restore", "sec-processor-relay",
                     "sec-executor", "taskstream-api-read-model", "taskstream-api-history", "taskstream-api-probe",
                     "taskstream-admin", "taskstream-cli-dlq"):
        assert expected in ids or any(i.startswith(expected) for i in ids), (expected, sorted(ids))
    assert any(i.startswith("api-") for i in ids), sorted(ids)  # the API's producer
    bare = [c["client.id"] for c in recorded
            if (c.get("sasl.username"), c.get("sasl.password"), c.get("sasl.mechanism"))
            != ("taskstream", SECRET, "SCRAM-SHA-256")]
    assert bare == [], bare
