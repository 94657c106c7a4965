"""`taskstream bench --grpc HOST:PORT`: the bench's submissions through the taskstream.v1 gRPC API.

A drop-in for ``bench.Client``'s submit side (``submit``, ``submit_batch``,
``close``): one channel per bench client thread, ``SubmitTask`` (or
``SubmitTasks`` with ``--batch``) per request. Waiting for the tasks stays
on HTTP, so the figures compare the two submit paths of one API.
"""

from __future__ import annotations

import grpc

from taskstream.grpc.v1 import tasks_pb2, tasks_pb2_grpc

from .bench import BenchError

TIMEOUT_S = 30.0


class GrpcClient:
    def __init__(self, target: str) -> None:
        self.target = target
        self.channel = grpc.insecure_channel(target)
        self.tasks = tasks_pb2_grpc.TaskServiceStub(self.channel)

    def _call(self, what: str, method, request):
        try:
            return method(request, timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            raise BenchError(f"{what} at {self.target}: {exc.code().name} {exc.details()}") from None

    def submit(self, handler: str = "noop", payload=None) -> str:
        task = tasks_pb2.TaskSpec(handler=handler)
        task.payload.struct_value.update(payload or {})
        return self._call("SubmitTask", self.tasks.SubmitTask, tasks_pb2.SubmitTaskRequest(task=task)).id

    def submit_batch(self, n: int, handler: str = "noop") -> list[str]:
        specs = []
        for _ in range(n):
            spec = tasks_pb2.TaskSpec(handler=handler)
            spec.payload.struct_value.SetInParent()
            specs.append(spec)
        out = self._call("SubmitTasks", self.tasks.SubmitTasks, tasks_pb2.SubmitTasksRequest(tasks=specs))
        return [t.id for t in out.tasks]

    def close(self) -> None:
        self.channel.close()
