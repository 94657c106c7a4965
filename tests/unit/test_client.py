"""``taskstream.client`` without a server: what goes on the wire (httpx.MockTransport) and how answers are read."""

from __future__ import annotations

import asyncio
import inspect
import json
from datetime import UTC, datetime

import httpx
import pytest

from taskstream.client import (
    UNSET,
    AsyncClient,
    Client,
    Conflict,
    NotFound,
    PreconditionFailed,
    RateLimited,
    ServerError,
    Task,
    TaskstreamError,
    Unavailable,
    ValidationFailed,
    task_body,
)
from taskstream.client.errors import error_for, retry_after_seconds

TASK = {"id": "t1", "handler": "echo", "status": "queued", "priority": "high", "payload": {"a": 1},
        "created_at": "2026-12-05T09:00:00.123456Z", "finished_at": None, "version": 2, "brand_new_field": 7}


def recording(answer=lambda req: httpx.Response(202, json=TASK)):
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer(request)

    return seen, httpx.MockTransport(handle)


def test_submit_sends_only_the_fields_given_and_the_headers(monkeypatch) -> None:
    monkeypatch.delenv("TASKSTREAM_TOKEN", raising=False)
    monkeypatch.setenv("TASKSTREAM_API_KEY", "k1")
    seen, transport = recording()
    with Client("http://api.test/", transport=transport) as ts:
        with pytest.warns(DeprecationWarning, match="max_attempts"):
            task = ts.submit("echo", None, priority="high", max_attempts=4, retry={"backoff": {"initial_s": 0.5}},
                             run_at=datetime(2030, 1, 1, tzinfo=UTC), labels={"team": "a"}, idempotency_key="k-1")
    req = seen[0]
    assert req.method == "POST" and str(req.url) == "http://api.test/api/v1/tasks"
    assert json.loads(req.content) == {"handler": "echo", "payload": None, "priority": "high",
                                       "run_at": "2030-01-01T00:00:00+00:00", "labels": {"team": "a"},
                                       "retry": {"backoff": {"initial_s": 0.5}, "max_attempts": 4}}
    assert req.headers["Idempotency-Key"] == "k-1" and req.headers["X-API-Key"] == "k1"
    assert "authorization" not in req.headers
    assert task.id == "t1" and task.created_at == datetime(2026, 12, 5, 9, 0, 0, 123456, tzinfo=UTC)
    assert task.raw["brand_new_field"] == 7 and task.finished_at is None and not task.terminal


def test_naive_times_are_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="time zone"):
        task_body("noop", run_at=datetime(2030, 1, 1))


def test_list_update_cancel_and_ids_on_the_wire() -> None:
    def answer(req: httpx.Request) -> httpx.Response:
        if req.method == "GET" and req.url.path == "/api/v1/tasks":
            last = req.url.params.get("cursor") == "c2"
            return httpx.Response(200, json={"tasks": [TASK], "next_cursor": None if last else "c2", "partial": False})
        return httpx.Response(202, json=TASK)

    seen, transport = recording(answer)
    with Client("http://api.test", token="tok", transport=transport) as ts:
        assert [t.id for t in ts.list(status="queued", labels={"team": "a", "env": "x"}, page_size=1)] == ["t1", "t1"]
        ts.update("a/b", if_match=3, priority="low", payload=None)
        ts.update("a", if_match='W/"3"', run_at="2030-01-01T00:00:00Z")
        ts.cancel("a", reason="why not")
        ts.retry("a")
    first, second, upd, upd2, cancel, retry = seen
    assert first.url.params.multi_items() == [("status", "queued"), ("label", "team:a"), ("label", "env:x"),
                                              ("limit", "1")]
    assert second.url.params["cursor"] == "c2"
    assert first.headers["Authorization"] == "Bearer tok"
    assert upd.method == "PATCH" and upd.url.raw_path == b"/api/v1/tasks/a%2Fb" and upd.headers["If-Match"] == '"3"'
    assert json.loads(upd.content) == {"priority": "low", "payload": None}
    assert upd2.headers["If-Match"] == 'W/"3"' and json.loads(upd2.content) == {"run_at": "2030-01-01T00:00:00Z"}
    assert cancel.method == "DELETE" and cancel.url.params["reason"] == "why not"
    assert retry.method == "POST" and retry.url.path == "/api/v1/tasks/a/retry" and retry.content == b""


@pytest.mark.parametrize("status, cls", [(400, ValidationFailed), (413, ValidationFailed), (422, ValidationFailed),
                                         (404, NotFound), (409, Conflict), (412, PreconditionFailed),
                                         (429, RateLimited), (503, Unavailable), (500, ServerError),
                                         (418, TaskstreamError)])
def test_each_status_is_its_exception(status: int, cls: type) -> None:
    problem = {"title": "T", "status": status, "detail": "d", "errors": [{"field": "retry.max_attempts",
                                                                         "message": "too small"}]}
    exc = error_for(status, problem, "2")
    assert type(exc) is cls and exc.status == status and exc.problem is problem and str(exc) == f"{status} T: d"
    if cls is ValidationFailed:
        assert exc.field == "retry.max_attempts" and exc.message == "too small"
    if cls in (RateLimited, Unavailable):
        assert exc.retry_after == 2.0


def test_a_504_write_outcome_unknown_is_an_unavailable_of_its_own_and_other_504s_are_server_errors() -> None:
    from taskstream.client import OutcomeUnknown

    unknown = {"type": "urn:taskstream:problem:write-outcome-unknown", "title": "T", "status": 504, "detail": "d"}
    exc = error_for(504, unknown, "1")
    assert type(exc) is OutcomeUnknown and isinstance(exc, Unavailable) and exc.retry_after == 1.0
    assert type(error_for(504, {"title": "Gateway Timeout"})) is ServerError  # a proxy's own 504 says nothing


def test_retry_after_seconds() -> None:
    assert retry_after_seconds("3") == 3.0 and retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None and retry_after_seconds("-1") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now


def test_a_non_json_error_still_raises_typed() -> None:
    _, transport = recording(lambda req: httpx.Response(502, text="<html>bad gateway</html>"))
    with Client("http://api.test", transport=transport) as ts, pytest.raises(ServerError) as exc:
        ts.get("x")
    assert exc.value.status == 502 and "bad gateway" in exc.value.detail


def test_async_client_has_every_method_of_client_and_sends_the_same() -> None:
    public = {n for n in dir(Client) if not n.startswith("_")} - {"close"}
    assert public <= {n for n in dir(AsyncClient) if not n.startswith("_")}
    for name in ("list", "pages", "schedules"):
        assert inspect.isasyncgenfunction(getattr(AsyncClient, name))
    assert inspect.iscoroutinefunction(AsyncClient.wait)

    seen: list[httpx.Request] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json=TASK)

    async def main() -> Task:
        async with AsyncClient("http://api.test", transport=httpx.MockTransport(handle)) as ts:
            return await ts.submit("echo", {"a": 1}, idempotency_key="k")

    task = asyncio.run(main())
    assert task.payload == {"a": 1} and seen[0].headers["Idempotency-Key"] == "k"
    assert json.loads(seen[0].content) == {"handler": "echo", "payload": {"a": 1}}
    assert repr(UNSET) == "UNSET" and not UNSET


def test_the_async_signatures_for_type_checkers_match_the_operations() -> None:
    """AsyncClient restates _Operations' signatures under TYPE_CHECKING (as async); they must not drift."""
    import ast
    from pathlib import Path

    from taskstream.client import _client

    tree = ast.parse(Path(_client.__file__).read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "AsyncClient")
    block = next(n for n in cls.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    stubs = {f.name: f for f in block.body if isinstance(f, ast.AsyncFunctionDef)}
    ops = {n for n, v in vars(_client._Operations).items() if callable(v) and not n.startswith("_")}
    assert set(stubs) == ops
    for name, stub in stubs.items():
        real = next(f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == name)
        assert ast.unparse(stub.args) == ast.unparse(real.args), name
        # the async client answers the async twins of the handles
        async_returns = ast.unparse(real.returns).replace("TaskHandle", "AsyncTaskHandle").replace(
            "WorkflowHandle", "AsyncWorkflowHandle")
        assert ast.unparse(stub.returns) == async_returns, name


def test_workflow_reads_on_the_wire_and_typed() -> None:
    doc = {"id": "w1", "status": "failed", "task_count": 2, "counts": {"succeeded": 1, "failed": 1},
           "created_at": "2026-01-01T00:00:00Z", "started_at": "2026-01-01T00:00:01Z",
           "finished_at": "2026-01-01T00:00:03Z", "updated_at": "2026-01-01T00:00:03Z", "truncated": False,
           "tasks": [{"id": "t1", "key": "a", "handler": "h", "status": "succeeded", "depends_on": [],
                      "started_at": "2026-01-01T00:00:01Z", "finished_at": "2026-01-01T00:00:02Z"},
                     {"id": "t2", "key": "b", "handler": "h", "status": "failed", "depends_on": ["t1"],
                      "error": "boom", "new_field": 1}],
           "edges": [{"from": "t1", "to": "t2"}]}
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/workflows"):
            return httpx.Response(200, json={"workflows": [{k: v for k, v in doc.items() if k not in ("tasks",
                                                                                                   "edges")}],
                                             "next_cursor": "c2"})
        return httpx.Response(200, json=doc)

    with Client("http://api.test", transport=httpx.MockTransport(handle)) as ts:
        run = ts.get_workflow("w/1")
        page = ts.workflows_page(status="failed", limit=5, cursor="c1")
    assert seen[0].url.raw_path == b"/api/v1/workflows/w%2F1"
    assert seen[1].url.params.multi_items() == [("status", "failed"), ("limit", "5"), ("cursor", "c1")]
    assert run.terminal and not run.succeeded and run.counts == {"succeeded": 1, "failed": 1}
    assert run.edges == [("t1", "t2")] and run.task("b").error == "boom" and run.task("b").raw["new_field"] == 1
    assert run.finished_at is not None and run.finished_at.tzinfo is not None
    assert run.task("a").terminal and (run.task("a").finished_at - run.task("a").started_at).total_seconds() == 1
    with pytest.raises(KeyError):
        run.task("zz")
    assert page.next_cursor == "c2" and page.items[0].tasks == [] and page.items[0].id == "w1"
