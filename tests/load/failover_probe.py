"""Measure how long a SIGKILLed processor's or executor's partitions wait for a survivor (not a test).

    PYTHONPATH=. .venv/bin/python tests/load/failover_probe.py --kill processor --runs 5
    PYTHONPATH=. .venv/bin/python tests/load/failover_probe.py --kill executor --runs 5 \
        --group-protocol classic --session-timeout-ms 6000

Each run starts its own Kafka node (or uses --bootstrap), makes a fresh topic set (6 partitions), and runs two
members of the group under test (two processors with their own data directories, or two executors) beside one
of the other kind. A writer produces TaskCreated events (handler sleep, 10 ms) at 50/s straight to <p>.events.
Once both members own partitions, one is SIGKILLed. Failover = from the kill until every task written in the
first 0.5 s after it has succeeded (the TaskSucceeded record's timestamp): some of those tasks land on the dead
member's partitions and wait for the survivor. The normal latency of a task (tens of ms) is included. Prints each
run and the median.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from taskstream.cli.broker import KafkaBroker, free_port
from taskstream.schemas import Settings, TaskCreated, TaskSucceeded, Topics, catalogue, codec
from taskstream.schemas.kafka import admin, describe_groups, ensure_topics
from tests.kafka_helpers import Component, TopicReader, producer, stop_all

RATE = 50
WINDOW_S = 0.5


def one_run(base: Settings, kill: str, folder: Path) -> float:
    s = base.model_copy(update={"prefix": f"fo{uuid.uuid4().hex[:8]}", "data_dir": folder / "data"})
    assert ensure_topics(s, catalogue(s)) == []
    topics = Topics(s.prefix)
    mine = "processor" if kill == "processor" else "executor"
    group = topics.processor_group if kill == "processor" else topics.executor_group
    procs: dict[str, Component] = {}
    for name in ("a", "b"):
        own = s.model_copy(update={"data_dir": folder / name}) if mine == "processor" else s
        args = [mine] if mine == "processor" else [mine, "--concurrency", "8"]
        procs[name] = Component(own, *args, log_path=folder / f"{name}.log")
    other = "executor" if mine == "processor" else "processor"
    procs[other] = Component(s, other, *(["--concurrency", "8"] if other == "executor" else []),
                             log_path=folder / f"{other}.log")
    created: list[tuple[str, float]] = []  # (task id, written at), appended by the writer
    stop = threading.Event()

    def write() -> None:
        p = producer(s)
        start, i = time.monotonic(), 0
        while not stop.is_set():
            e = TaskCreated(task_id=f"fo-{i:06d}", occurred_at=datetime.now(UTC), producer="probe",
                            handler="sleep", payload=codec.dumps_json({"seconds": 0.01}), max_attempts=1)
            created.append((e.task_id, time.time()))
            p.produce(topics.events, codec.encode(e), e.task_id.encode(), headers=codec.headers(e))
            p.poll(0)
            i += 1
            time.sleep(max(0.0, start + i / RATE - time.monotonic()))
        p.flush(10)

    writer = threading.Thread(target=write, daemon=True)
    client = admin(s)
    try:
        deadline = time.monotonic() + 120
        while True:  # both members own partitions
            g = describe_groups(client, [group], 5)[group]
            if isinstance(g, dict) and len(g["members"]) == 2 and all(m["assignment"] for m in g["members"]):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"group {group} never had two members with partitions: {g}")
            time.sleep(0.2)
        writer.start()
        time.sleep(3)  # a steady stream first
        procs["b"].kill()
        killed = time.time()
        window = lambda: [t for t, at in created[:len(created)] if killed <= at < killed + WINDOW_S]  # noqa: E731
        reader = TopicReader(s, topics.events)
        deadline = time.monotonic() + 120
        done: dict[str, float] = {}
        while time.monotonic() < deadline:
            for m in reader.poll(0.1):
                e = codec.decode(m.value())
                if isinstance(e, TaskSucceeded):
                    done[e.task_id] = m.timestamp()[1] / 1000
            wanted = window()
            if time.time() > killed + WINDOW_S and wanted and all(t in done for t in wanted):
                reader.close()
                return max(done[t] for t in wanted) - killed
        reader.close()
        raise SystemExit("tasks written after the kill did not all succeed within 120 s")
    finally:
        stop.set()
        stop_all(*procs.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kill", choices=("processor", "executor"), required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--group-protocol", choices=("consumer", "classic"), default="consumer")
    ap.add_argument("--session-timeout-ms", type=int, default=None, help="default: the setting's default")
    ap.add_argument("--bootstrap", default=None, help="a running Kafka (default: start a node for the probe)")
    ap.add_argument("--log-level", default="WARNING", help="of the components (their logs go to --dir)")
    ap.add_argument("--dir", default=None, help="keep the logs of each run here (default: a temporary directory)")
    args = ap.parse_args()
    update: dict[str, object] = {"group_protocol": args.group_protocol, "partitions": 6, "metrics_port": 0,
                                 "log_level": args.log_level}
    if args.session_timeout_ms:
        update["session_timeout_ms"] = args.session_timeout_ms
    with tempfile.TemporaryDirectory(prefix="taskstream-failover-") as scratch:
        tmp = args.dir or scratch
        broker = None
        if args.bootstrap is None:
            broker = KafkaBroker(free_port(), Path(tmp) / "kafka").start(timeout=120)
        base = Settings(bootstrap_servers=args.bootstrap or broker.bootstrap_servers).model_copy(update=update)
        try:
            figures = []
            for i in range(args.runs):
                folder = Path(tmp) / f"run-{i}"
                folder.mkdir()
                figures.append(one_run(base, args.kill, folder))
                print(f"run {i + 1}: {args.kill} failover {figures[-1]:.2f}s", flush=True)
            print(f"{args.kill} failover, group.protocol={args.group_protocol}, session timeout "
                  f"{base.session_timeout_ms} ms: median {statistics.median(figures):.2f}s of {len(figures)} runs "
                  f"({', '.join(f'{f:.2f}' for f in figures)})", flush=True)
        finally:
            if broker is not None:
                broker.stop()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    main()
