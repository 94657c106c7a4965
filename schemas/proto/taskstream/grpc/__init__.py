"""Generated gRPC stubs of the taskstream.v1 API (``taskstream.grpc.v1``): import them from here.

The ``.proto`` files live beside the generated modules, under
``schemas/proto/taskstream/grpc/v1/``, a path that mirrors this package so
that the generated imports (``from taskstream.grpc.v1 import tasks_pb2``)
resolve. ``make proto`` regenerates them; the generated files are committed.

    import grpc
    from taskstream.grpc.v1 import tasks_pb2, tasks_pb2_grpc

    async with grpc.aio.insecure_channel("127.0.0.1:50051") as channel:
        tasks = tasks_pb2_grpc.TaskServiceStub(channel)
        task = await tasks.SubmitTask(tasks_pb2.SubmitTaskRequest(task=tasks_pb2.TaskSpec(handler="noop")))
"""
