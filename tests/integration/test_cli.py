"""The `taskstream` command as users run it: a subprocess, real broker, exit codes and messages."""

from __future__ import annotations

import json
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


def _cli() -> list[str]:
    """The console script next to this interpreter, else the module."""
    script = shutil.which("taskstream", path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, "-m", "taskstream.cli.main"]


def taskstream(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*_cli(), *args], env=env, capture_output=True, text=True, timeout=timeout)


def env_for(bootstrap: str, prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSTREAM_")}
    return {**env, "TASKSTREAM_BOOTSTRAP_SERVERS": bootstrap, "TASKSTREAM_PREFIX": prefix, "TASKSTREAM_PARTITIONS": "3"}


def test_help_lists_the_commands() -> None:
    r = taskstream("--help")
    assert r.returncode == 0, r.stderr
    for command in ("dev", "processor", "executor", "api", "topics", "bench"):
        assert f"  {command}" in r.stdout, r.stdout


def test_version_prints_the_installed_distribution_version() -> None:
    from importlib.metadata import version

    r = taskstream("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"taskstream {version('taskstream')}"


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


def test_broker_address_and_prefix_are_flags_too(broker: str) -> None:
    """``--bootstrap-servers`` and ``--prefix`` do what the variables do, and win over them."""
    prefix = f"cli{uuid.uuid4().hex[:8]}"
    env = env_for(f"127.0.0.1:{free_port()}", "not-this-prefix")  # the variables name a dead broker
    flags = ["--bootstrap-servers", broker, "--prefix", prefix]
    created = taskstream("topics", "create", *flags, env=env)
    assert created.returncode == 0, created.stderr
    listed = taskstream("topics", "list", "--json", *flags, env=env)
    assert listed.returncode == 0, listed.stderr
    names = {json.loads(line)["topic"] for line in listed.stdout.splitlines()}
    assert {spec.name for spec in catalogue(Settings(prefix=prefix))} <= names


@pytest.mark.parametrize("command", [["dev"], ["api"], ["processor"], ["executor"], ["events", "tail"], ["lag"],
                                     ["dlq", "list"], ["keys", "list"], ["state", "rebuild"], ["topics", "list"]])
def test_every_address_and_port_has_a_flag_shown_with_its_variable(command: list[str]) -> None:
    help = " ".join(taskstream(*command, "--help").stdout.split())
    wanted = {"--bootstrap-servers": "TASKSTREAM_BOOTSTRAP_SERVERS", "--prefix": "TASKSTREAM_PREFIX"}
    if command[0] in ("dev", "api"):
        wanted["--grpc-port"] = "TASKSTREAM_GRPC_PORT"
    if command[0] in ("dev", "processor", "executor"):
        wanted["--metrics-port"] = "TASKSTREAM_METRICS_PORT"
    for flag, variable in wanted.items():
        assert flag in help and f"env var: {variable}" in help, (flag, help)


def test_topics_create_reports_a_partition_mismatch(broker: str) -> None:
    prefix = f"cli{uuid.uuid4().hex[:8]}"
    assert taskstream("topics", "create", env=env_for(broker, prefix)).returncode == 0
    r = taskstream("topics", "create", "--partitions", "2", env=env_for(broker, prefix))
    assert r.returncode == 1
    assert f"{prefix}.events has 3 partitions, expected 2" in r.stderr


def test_topics_create_against_an_unreachable_broker_fails_cleanly() -> None:
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    r = taskstream("topics", "create", "--timeout", "2", env=env_for(closed, "unreachable"), timeout=45)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    # librdkafka's own connection-refused lines surround it (its log goes to stderr), so look for the line.
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and closed in errors[0], r.stderr[-2000:]


@pytest.mark.slow
def test_bench_runs_its_own_dev_stack_and_prints_json(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSTREAM_")}
    r = subprocess.run([*_cli(), "bench", "--start-stack", "-n", "200", "--clients", "2", "--json",
                        "--prefill-events", "1000"],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    figures = json.loads(r.stdout)
    assert figures["tasks"] == 200 and figures["started_dev"] is True
    assert figures["prefill_tasks"] == 334 and figures["prefill_events"] >= 1000 and "prefilling the log" in r.stderr
    assert figures["throughput_per_s"] > 0
    assert 0 < figures["start_latency_ms"]["p50"] <= figures["start_latency_ms"]["p99"]
    assert figures["finish_latency_ms"]["p99"] >= figures["start_latency_ms"]["p99"]


def test_bench_needs_a_url_or_start_stack() -> None:
    for args in ([], ["--url", "http://127.0.0.1:1", "--start-stack"]):
        r = taskstream("bench", "-n", "10", *args, timeout=60)
        assert r.returncode == 2 and "--url" in r.stderr and "--start-stack" in r.stderr, r.stderr


def test_bench_against_an_unreachable_api_fails_cleanly() -> None:
    r = taskstream("bench", "-n", "10", "--url", f"http://127.0.0.1:{free_port()}", timeout=60)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "error: the API at http://127.0.0.1:" in r.stderr and "not ready" in r.stderr, r.stderr
