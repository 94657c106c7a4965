"""The local Kafka node's launcher (cli/broker.py) without starting one: what it needs, where it listens, and
`taskstream dev` stopping at once, saying what to install, when Java is missing."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taskstream.cli import broker
from taskstream.schemas import BrokerUnavailable


def test_without_java_the_error_says_what_to_install(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no java on PATH
    with pytest.raises(BrokerUnavailable, match="Java 17\\+ is needed.*openjdk-17-jre-headless"):
        broker.java_command()


def test_an_old_java_is_refused(monkeypatch, tmp_path) -> None:
    fake = tmp_path / "bin" / "java"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho \'openjdk version "11.0.2" 2019-01-15\' >&2\n')
    fake.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(BrokerUnavailable, match="Java 11"):
        broker.java_command()


def test_without_maven_and_no_cached_jars_the_error_says_what_to_install(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TASKSTREAM_KAFKA_HOME", str(tmp_path / "kafka"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrokerUnavailable, match="apt-get install maven"):
        broker.ensure_jars()


def test_the_jar_cache_is_outside_the_project_and_named_by_the_pom(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("TASKSTREAM_KAFKA_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    home = broker.kafka_home()
    assert home.parent == tmp_path / "taskstream"
    assert home.name.startswith(f"kafka-{broker.kafka_version()}-")
    assert broker.kafka_version().startswith("4.")


def test_the_node_listens_on_loopback_only() -> None:
    props = dict(line.split("=", 1) for line in broker.server_properties(9092, 9093, Path("/x")).splitlines() if line)
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092"
    assert props["log.dirs"] == "/x"
    assert props["auto.create.topics.enable"] == "false"


class _SlowExit:
    """A node's process as ``stop`` sees it, that exits (143, as Kafka on SIGTERM) only if waited for 60 s or more:
    the class-data archive dump of a loaded machine."""

    returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        pass

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None and timeout is not None and timeout < 60:
            raise subprocess.TimeoutExpired("java", timeout)
        if self.returncode is None:
            self.returncode = 143
        return self.returncode

    def kill(self) -> None:
        self.returncode = -9


def test_a_node_writing_its_class_data_archive_is_given_time_to_finish_it(tmp_path) -> None:
    node = broker.KafkaBroker(1, tmp_path, controller_port=2)
    node.proc = _SlowExit()  # type: ignore[assignment]
    written, target = tmp_path / "kafka.jsa.tmp", tmp_path / "kafka.jsa"
    written.write_bytes(b"archive")
    node._archive_tmp = (written, target)
    node.stop()
    assert node.proc.returncode == 143 and target.read_bytes() == b"archive"


def test_dev_without_java_stops_at_once_saying_what_to_install(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKSTREAM_", "JAVA_HOME"))}
    env["PATH"] = str(tmp_path)
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "taskstream.cli.main", "dev", "--data-dir", str(tmp_path / "d")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "Java 17+ is needed" in r.stderr and "apt-get install openjdk-17-jre-headless" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(("options", "present", "absent"), [
    ("", ["-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20"], ["-XX:+UseSerialGC"]),
    ("-XX:TieredStopAtLevel=1 -XX:+UseSerialGC", ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"], ["-XX:+UseG1GC"]),
    ("-Dx='a b'", ["-XX:+UseG1GC", "-Dx=a b"], []),
])
def test_jvm_options_from_the_environment_join_the_node_s_command(monkeypatch, tmp_path, options, present,
                                                                    absent) -> None:
    """TASKSTREAM_KAFKA_JVM_OPTIONS is split like a shell would; a collector chosen there replaces G1."""
    from taskstream.cli.broker import JVM_OPTIONS_ENV, KafkaBroker, free_port

    monkeypatch.setenv(JVM_OPTIONS_ENV, options)
    node = KafkaBroker(free_port(), tmp_path / "node")
    node.log_dir.mkdir(parents=True)
    (node.log_dir / "meta.properties").write_text("")  # formatted: no StorageTool run
    java = shutil.which("java") or "java"
    cmd = node._prepare(java, tmp_path / "libs")
    assert cmd[-2:] == ["kafka.Kafka", str(node.data_dir / "server.properties")]
    for option in present:
        assert option in cmd
    for option in absent:
        assert option not in cmd


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _own_ports() -> tuple[int, int]:
    """The ports this test process may use: its xdist worker's slice (no other process draws from it)."""
    from taskstream.cli.broker import _free_port_range

    span = _free_port_range()
    assert span is not None
    return span


def test_free_ports_come_from_the_range_asked_for_and_are_bindable(monkeypatch) -> None:
    from taskstream.cli.broker import FREE_PORTS_ENV, free_port

    low = _own_ports()[0]
    monkeypatch.setenv(FREE_PORTS_ENV, f"{low}-{low + 9}")
    ports = {free_port() for _ in range(40)}
    assert ports <= set(range(low, low + 10)) and len(ports) > 1
    assert all(_bindable(port) for port in ports)


def test_a_free_port_skips_a_bound_one(monkeypatch) -> None:
    from taskstream.cli.broker import FREE_PORTS_ENV, free_port

    low, high = _own_ports()
    taken = next(p for p in range(low, high - 1) if _bindable(p) and _bindable(p + 1))
    with socket.socket() as held:
        held.bind(("127.0.0.1", taken))
        monkeypatch.setenv(FREE_PORTS_ENV, f"{taken}-{taken + 1}")
        assert {free_port() for _ in range(10)} == {taken + 1}


def test_by_default_free_ports_lie_below_the_ephemeral_range(monkeypatch) -> None:
    """The kernel hands ports of its ephemeral range to outgoing connections: a port drawn there could be taken by
    a Kafka client's connection before the server that wanted it binds it."""
    from taskstream.cli.broker import FREE_PORTS_ENV, FREE_PORTS_FLOOR, free_port

    monkeypatch.delenv(FREE_PORTS_ENV, raising=False)
    ephemeral_low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    assert all(FREE_PORTS_FLOOR <= free_port() < ephemeral_low for _ in range(20))
