"""What a fresh Kafka node's JVM costs under the test suite's kind of work: CPU of the node while 20 topic sets
(the catalogue at 3 partitions, 39 partitions each) are made, written to and deleted, then 10 s idle.

    .venv/bin/python tests/load/broker_jvm_probe.py ""
    .venv/bin/python tests/load/broker_jvm_probe.py "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"

The argument is TASKSTREAM_KAFKA_JVM_OPTIONS for the node. Figures: docs/benchmarks/2026-12-07-test-broker-jvm.md.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid

from taskstream.cli.broker import JVM_OPTIONS_ENV, KafkaBroker, free_port
from taskstream.schemas import Settings, catalogue
from taskstream.schemas.kafka import admin, ensure_topics, producer


def cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(options: str) -> None:
    os.environ[JVM_OPTIONS_ENV] = options
    started = time.monotonic()
    node = KafkaBroker(free_port(), tempfile.mkdtemp()).start(timeout=120)
    try:
        assert node.proc is not None
        pid = node.proc.pid
        print(f"[{options}] ready in {time.monotonic() - started:.1f}s, {cpu_s(pid):.1f}s CPU")
        before, t0 = cpu_s(pid), time.monotonic()
        for _ in range(20):
            s = Settings(bootstrap_servers=node.bootstrap_servers, prefix=f"t{uuid.uuid4().hex[:10]}", partitions=3)
            assert ensure_topics(s, catalogue(s)) == []
            p = producer(s, "probe")
            for j in range(300):
                p.produce(f"{s.prefix}.events", b"x" * 200, str(j).encode())
            assert p.flush(10) == 0
            client = admin(s)
            names = [t for t in client.list_topics(timeout=5).topics if t.startswith(s.prefix + ".")]
            for done in client.delete_topics(names, operation_timeout=5).values():
                done.result()
        print(f"20 topic sets: {time.monotonic() - t0:.1f}s, {cpu_s(pid) - before:.1f}s CPU of the node")
        before = cpu_s(pid)
        time.sleep(10)
        print(f"10 s idle after: {cpu_s(pid) - before:.2f}s CPU")
    finally:
        node.stop()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
