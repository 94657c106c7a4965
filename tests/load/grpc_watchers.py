"""Hold N gRPC watch streams open against a running API, for load measurements (not a test).

    python tests/load/grpc_watchers.py 127.0.0.1:50051 200            # 200 WatchTask streams
    python tests/load/grpc_watchers.py 127.0.0.1:50051 200 --all noop # 200 WatchTasks(handler=noop) streams

WatchTask mode first submits N tasks scheduled an hour ahead (so their streams
stay open) and watches one each. --all mode watches every change of the
given handler in every stream (the fan-out's worst case). It prints how many
changes the streams received, every 5 s, until Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time

import grpc
from google.protobuf import timestamp_pb2

from taskstream.grpc.v1 import tasks_pb2, tasks_pb2_grpc


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("n", type=int)
    ap.add_argument("--all", metavar="HANDLER", help="WatchTasks(handler=HANDLER) instead of WatchTask")
    args = ap.parse_args()
    received = 0
    async with grpc.aio.insecure_channel(args.target) as channel:
        stub = tasks_pb2_grpc.TaskServiceStub(channel)

        async def one(request, method) -> None:
            nonlocal received
            async for _ in method(request):
                received += 1

        if args.all:
            calls = [one(tasks_pb2.WatchTasksRequest(handler=[args.all]), stub.WatchTasks) for _ in range(args.n)]
        else:
            later = timestamp_pb2.Timestamp(seconds=int(time.time()) + 3600)
            batch = await stub.SubmitTasks(tasks_pb2.SubmitTasksRequest(
                tasks=[tasks_pb2.TaskSpec(handler="noop", run_at=later) for _ in range(args.n)]))
            calls = [one(tasks_pb2.WatchTaskRequest(id=t.id), stub.WatchTask) for t in batch.tasks]
        tasks = [asyncio.ensure_future(c) for c in calls]
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"{args.n} streams open", flush=True)
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 5)
            except TimeoutError:
                pass
            open_ = sum(not t.done() for t in tasks)
            print(f"open {open_} streams, {received} changes received", flush=True)
        for t in tasks:
            t.cancel()


if __name__ == "__main__":
    asyncio.run(main())
