"""The handler SDK without a broker: registry, context, module loading, built-ins."""

from __future__ import annotations

import asyncio
import sys

import pytest

from taskstream.executors import (
    BUILTINS,
    HandlerImportError,
    PermanentError,
    Registry,
    TaskContext,
    default_registry,
    handler,
    load_handler_modules,
)


def ctx(**kw) -> TaskContext:
    return TaskContext(**{"task_id": "t1", "attempt": 2, "handler": "h", "priority": "high", **kw})


def test_register_sync_and_async():
    reg = Registry()

    @reg.handler("a")
    async def a(payload, ctx):
        return 1

    @handler("b", registry=reg)
    def b(payload, ctx):
        return 2

    assert reg.names() == ["a", "b"] and "a" in reg and len(reg) == 2
    assert reg.get("a").is_async and not reg.get("b").is_async
    assert reg.get("a").fn is a and reg.get("missing") is None
    assert b(None, None) == 2  # the decorator returns the function unchanged


def test_async_callable_object_is_async():
    class Resize:
        async def __call__(self, payload, ctx):
            return None

    reg = Registry()
    reg.register("resize", Resize())
    assert reg.get("resize").is_async


def test_duplicate_name_rejected_but_same_function_may_reregister():
    reg = Registry()

    def first(payload, ctx): ...

    reg.register("x", first)
    reg.register("x", first)  # a module imported twice
    with pytest.raises(ValueError, match="'x' is already registered"):
        reg.register("x", lambda p, c: None)


def test_bad_registrations():
    reg = Registry()
    with pytest.raises(ValueError):
        reg.register("", lambda p, c: None)
    with pytest.raises(TypeError):
        reg.register("y", 42)


def test_handler_defaults_to_default_registry():
    name = "test_registry.default.example"

    @handler(name)
    def example(payload, ctx): ...

    try:
        assert default_registry.get(name).fn is example
    finally:
        default_registry._handlers.pop(name)


def test_context():
    c = ctx()
    assert c.idempotency_key == "t1:2"
    assert c.last_checkpoint is None and c.cancelled is False
    c._cancel()
    assert c.cancelled is True


def test_load_handler_modules_from_cwd(tmp_path, monkeypatch):
    (tmp_path / "mytasks_for_test.py").write_text(
        "from taskstream.executors import handler\n"
        "@handler('mytasks_for_test.hello')\n"
        "def hello(payload, ctx):\n    return 'hi'\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        assert load_handler_modules(["mytasks_for_test"]) == ["mytasks_for_test"]
        assert str(tmp_path) in sys.path
        assert default_registry.get("mytasks_for_test.hello") is not None
    finally:
        default_registry._handlers.pop("mytasks_for_test.hello", None)
        sys.modules.pop("mytasks_for_test", None)


def test_load_handler_modules_names_the_failing_module(tmp_path, monkeypatch):
    (tmp_path / "broken_tasks_for_test.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HandlerImportError, match="'no_such_module_xyz'") as missing:
        load_handler_modules(["no_such_module_xyz"])
    assert missing.value.module == "no_such_module_xyz"
    with pytest.raises(HandlerImportError, match="'broken_tasks_for_test'.*boom at import"):
        load_handler_modules(["broken_tasks_for_test"])
    sys.modules.pop("broken_tasks_for_test", None)


def test_builtins():
    assert set(BUILTINS.names()) >= {"noop", "sleep", "echo"}
    run = lambda name, payload: asyncio.run(BUILTINS.get(name).fn(payload, ctx()))  # noqa: E731
    assert run("noop", {"x": 1}) is None
    assert run("echo", {"x": [1, 2]}) == {"x": [1, 2]}
    assert run("sleep", {"seconds": 0.01}) == {"slept": 0.01}
    assert run("sleep", {"seconds": 0}) == {"slept": 0}


@pytest.mark.parametrize("payload", [None, [], {}, {"secs": 1}, {"seconds": "1"}, {"seconds": -1}, {"seconds": True},
                                     {"seconds": float("nan")}])
def test_sleep_rejects_bad_payload_permanently(payload):
    with pytest.raises(PermanentError, match="seconds"):
        asyncio.run(BUILTINS.get("sleep").fn(payload, ctx()))
