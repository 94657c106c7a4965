"""``taskstream.client`` against a live stack (processor, executor, API over HTTP), sync and async.

Every typed error is provoked for real where the API can answer it
(NotFound, Conflict, PreconditionFailed, ValidationFailed, Unavailable);
the API has no authentication or rate limit yet, so Unauthorized,
Forbidden and RateLimited are checked against a small HTTP stub on
127.0.0.1 that answers their problem documents (and shows which
credentials the client sent).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from taskstream.cli.broker import KafkaBroker, free_port
from taskstream.client import (
    AsyncClient,
    Client,
    Conflict,
    Forbidden,
    NotFound,
    OutcomeUnknown,
    PreconditionFailed,
    RateLimited,
    RetryPolicy,
    ServerError,
    Task,
    TaskstreamError,
    Unauthorized,
    Unavailable,
    ValidationFailed,
    WaitTimeout,
    task_body,
)
from tests.conftest import wait_until
from tests.integration.live_stack import LiveStack

pytestmark = pytest.mark.integration

LATER = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)


@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory):
    s = LiveStack(broker, tmp_path_factory.mktemp("client")).wait_ready()
    yield s
    s.stop()


@pytest.fixture
def ts(stack):
    with Client(stack.url) as c:
        yield c


def assert_redriven(answer: Task, failed: Task) -> None:
    """``answer`` (from a retry) holds the redrive: due again, or already on a later attempt (a permanent
    failure can run and fail again before the API reads its own write back)."""
    assert answer.version > failed.version
    assert answer.status in ("scheduled", "queued") or answer.attempt > failed.attempt, answer


# ------------------------------------------------------------------ sync


def test_submit_wait_and_the_typed_task(ts: Client) -> None:
    task = ts.submit("echo", {"hello": "world"}, priority="high", labels={"team": "a"}, name="greet",
                     retry=RetryPolicy(max_attempts=2), timeout_s=30)
    assert isinstance(task.task, Task) and task.task.status in ("pending", "queued", "scheduled") and task.version >= 1
    assert task.priority == "high" and task.labels == {"team": "a"} and task.max_attempts == 2
    done = ts.wait(task.id, timeout=30)
    assert done.status == "succeeded" and done.succeeded and done.terminal
    assert done.result == {"hello": "world"} and done.attempt == 1
    assert done.created_at.tzinfo is not None and done.finished_at >= done.started_at
    assert done.raw["id"] == task.id and done.retry["max_attempts"] == 2


def test_delay_s_schedules_the_task_from_now(ts: Client) -> None:
    before = datetime.now(UTC)
    task = ts.submit("echo", {}, delay_s=120)
    assert task.task.status == "scheduled" and task.run_at >= before + timedelta(seconds=120)
    ts.cancel(task.id)


def test_a_failing_task_ends_failed_and_retry_redrives_it(ts: Client) -> None:
    task = ts.submit("fail", {"message": "no luck"})
    seen: list[str] = []
    failed = ts.wait(task.id, timeout=30, on_update=lambda t: seen.append(t.status))
    assert failed.status == "failed" and "no luck" in failed.error and seen[-1] == "failed"
    again = ts.retry(failed.id, reason="try again")
    assert_redriven(again, failed)
    assert ts.wait(task.id, timeout=30).attempt == 2
    with pytest.raises(Conflict) as exc:
        ts.retry(ts.submit("noop").id)  # not failed: a 409
    assert exc.value.status == 409 and "only failed or upstream_failed" in exc.value.detail


def test_cancel_and_cancelling_a_finished_task_is_a_conflict(ts: Client) -> None:
    later = ts.submit("noop", run_at=LATER)
    assert later.task.status == "scheduled" and later.run_at == LATER
    cancelled = ts.cancel(later.id, reason="not needed")
    assert cancelled.status == "cancelled" and cancelled.error == "cancelled: not needed"
    with pytest.raises(Conflict) as exc:
        ts.cancel(later.id)
    assert "already cancelled" in exc.value.detail and exc.value.problem["type"].endswith(":conflict")


def test_update_with_if_match_stale_version_and_started_task(ts: Client) -> None:
    task = ts.submit("noop", run_at=LATER)
    changed = ts.update(task.id, if_match=task.version, priority="low", payload={"n": 1})
    assert changed.priority == "low" and changed.payload == {"n": 1} and changed.version == task.version + 1
    with pytest.raises(PreconditionFailed) as exc:  # the version we read is stale now
        ts.update(task.id, if_match=task.version, priority="high")
    assert exc.value.status == 412 and exc.value.version == changed.version
    ts.cancel(task.id)
    done = ts.wait(ts.submit("noop").id, timeout=30)
    with pytest.raises(Conflict):  # current version, but it already ran
        ts.update(done.id, if_match=done.version, priority="high")


def test_not_found_and_validation_errors_name_the_field(ts: Client) -> None:
    with pytest.raises(NotFound) as exc:
        ts.get("no-such-task")
    assert exc.value.status == 404 and "no-such-task" in exc.value.detail
    with pytest.raises(NotFound):
        ts.cancel("no-such-task")
    with pytest.raises(ValidationFailed) as exc:
        ts.submit("noop", priority="urgent")
    assert exc.value.field == "priority" and exc.value.status == 422
    with pytest.raises(ValidationFailed) as exc:
        ts.submit("noop", retry=RetryPolicy(max_attempts=0))
    assert exc.value.field == "retry.max_attempts"
    with pytest.raises(ValidationFailed) as exc:
        ts.submit_many([task_body("noop"), task_body("noop", labels={"a:b": "c"})])
    assert exc.value.field.startswith("tasks[1].labels")
    with pytest.raises(ValidationFailed) as exc:
        ts.update(ts.submit("noop", run_at=LATER).id, if_match="v1", priority="low")
    assert exc.value.field == "If-Match"
    assert isinstance(exc.value, TaskstreamError) and "If-Match" in str(exc.value)


def test_idempotency_key(ts: Client) -> None:
    key = f"order-{uuid.uuid4().hex}"
    first = ts.submit("noop", {"order": 1}, idempotency_key=key)
    assert ts.submit("noop", {"order": 1}, idempotency_key=key).id == first.id
    with pytest.raises(ValidationFailed) as exc:
        ts.submit("noop", {"order": 2}, idempotency_key=key)
    assert exc.value.field == "Idempotency-Key"
    batch = ts.submit_many([task_body("noop"), task_body("echo", {"x": 1})], idempotency_key=key + "-b")
    again = ts.submit_many([task_body("noop"), task_body("echo", {"x": 1})], idempotency_key=key + "-b")
    assert [t.id for t in batch] == [t.id for t in again] and len(batch) == 2


def test_submit_many_workflow_and_events(ts: Client) -> None:
    tasks = ts.submit_many([task_body("echo", {"i": i}, labels={"batch": "b1"}) for i in range(3)])
    assert [t.payload for t in tasks] == [{"i": 0}, {"i": 1}, {"i": 2}]
    wf = ts.workflow([{"key": "a", "handler": "echo", "payload": 1},
                      {"key": "b", "handler": "echo", "payload": 2, "depends_on": ["a"]}])
    assert set(wf.task_ids) == {"a", "b"} and wf.workflow_id
    b = ts.wait(wf.task_ids["b"], timeout=30)
    assert b.status == "succeeded" and b.depends_on == [wf.task_ids["a"]] and b.workflow_id == wf.workflow_id
    with pytest.raises(ValidationFailed) as exc:
        ts.workflow({"tasks": [{"key": "a", "handler": "noop", "depends_on": ["a"]}]})
    assert exc.value.field.startswith("tasks[0].depends_on")
    history = ts.events(b.id)
    types = [e.type for e in history]
    assert types[0] == "TaskCreated" and types[-1] in ("TaskSucceeded", "TaskStarted") and "TaskSucceeded" in types
    assert all(e.occurred_at.tzinfo is not None and e.producer for e in history)
    assert history[0].fields["handler"] == "echo"


def test_get_list_and_wait_workflows(ts: Client) -> None:
    wf = ts.workflow([{"key": "c", "handler": "noop", "depends_on": ["b"]},
                      {"key": "b", "handler": "fail", "depends_on": ["a"]},
                      {"key": "a", "handler": "echo", "payload": 1}])
    run = ts.get_workflow(wf.workflow_id)
    assert run.id == wf.workflow_id and run.task_count == 3 and run.created_at.tzinfo is not None
    assert [t.key for t in run.tasks] == ["a", "b", "c"] and run.task("b").id == wf.task_ids["b"]
    assert run.edges == [(wf.task_ids["a"], wf.task_ids["b"]), (wf.task_ids["b"], wf.task_ids["c"])]
    seen: list[str] = []
    done = ts.wait_workflow(wf.workflow_id, timeout=30, on_update=lambda w: seen.append(w.status))
    assert done.status == "failed" and done.terminal and not done.succeeded and seen[-1] == "failed"
    assert done.task("c").status == "upstream_failed" and "planned failure" in done.task("b").error
    assert done.counts == {"succeeded": 1, "failed": 1, "upstream_failed": 1}
    assert done.started_at <= done.finished_at
    assert wf.workflow_id in [w.id for w in ts.list_workflows(status="failed", page_size=1)]
    later = ts.workflow([{"key": "x", "handler": "noop", "run_at": LATER.isoformat()}])
    page = ts.workflows_page(limit=1)
    assert [w.id for w in page.items] == [later.workflow_id] and page.next_cursor and page.items[0].tasks == []
    with pytest.raises(NotFound):
        ts.get_workflow("nope")
    with pytest.raises(ValidationFailed) as exc:
        ts.workflows_page(status="done")
    assert exc.value.field == "status"
    with pytest.raises(WaitTimeout) as waited:
        ts.wait_workflow(later.workflow_id, timeout=0.2)
    assert waited.value.task.status == "running"


def test_get_as_of_shows_the_past(ts: Client) -> None:
    task = ts.submit("noop", run_at=LATER)
    before = datetime.now(UTC)
    time.sleep(0.05)
    ts.update(task.id, priority="low")
    wait_until(lambda: ts.get(task.id).priority == "low", timeout=10)
    assert ts.get(task.id, as_of=before).priority == "medium"
    with pytest.raises(NotFound):
        ts.get(task.id, as_of=task.created_at - timedelta(hours=1))
    with pytest.raises(ValidationFailed) as exc:
        ts.get(task.id, as_of="yesterday")
    assert exc.value.field == "as_of"
    ts.cancel(task.id)


def test_list_follows_the_cursor_with_filters(ts: Client) -> None:
    label = uuid.uuid4().hex[:8]
    ids = [t.id for t in ts.submit_many([task_body("noop", run_at=LATER, labels={"run": label}) for _ in range(5)])]
    pages = list(ts.pages(labels={"run": label}, limit=2))
    assert [len(p.items) for p in pages] == [2, 2, 1] and pages[-1].next_cursor is None
    listed = [t.id for t in ts.list(labels={"run": label}, page_size=2)]
    assert sorted(listed) == sorted(ids) and len(listed) == 5
    assert [t.id for t in ts.list(labels={"run": label}, status="succeeded")] == []
    assert {t.status for t in ts.list(labels={"run": label}, status="scheduled", handler="noop")} == {"scheduled"}
    with pytest.raises(ValidationFailed) as exc:
        ts.list_page(cursor="garbage!")
    assert exc.value.field == "cursor"
    for i in ids:
        ts.cancel(i)


def test_schedules_create_get_list_delete(ts: Client) -> None:
    name = f"nightly-{uuid.uuid4().hex[:6]}"
    s = ts.create_schedule("0 3 * * *", {"handler": "noop", "payload": {"k": 1}}, timezone="Europe/Paris", name=name)
    assert s.status == "active" and s.cron == "0 3 * * *" and s.next_fire_at > datetime.now(UTC)
    assert ts.get_schedule(s.id).name == name
    assert s.id in [x.id for x in ts.schedules(status="active")]
    deleted = ts.delete_schedule(s.id)
    assert deleted.status == "deleted"
    with pytest.raises(Conflict):
        ts.delete_schedule(s.id)
    with pytest.raises(NotFound):
        ts.get_schedule("no-such-schedule")
    with pytest.raises(ValidationFailed) as exc:
        ts.create_schedule("every day", {"handler": "noop"})
    assert exc.value.field == "cron"


def test_wait_times_out_with_the_last_state(ts: Client) -> None:
    task = ts.submit("noop", run_at=LATER)
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout) as exc:
        ts.wait(task.id, timeout=0.5)
    assert 0.4 < time.monotonic() - t0 < 5 and exc.value.task.status == "scheduled"
    assert isinstance(exc.value, TimeoutError)
    ts.cancel(task.id)


def test_stats_and_ready(ts: Client) -> None:
    assert ts.ready()["checks"]["broker"] == "ok"
    assert ts.stats()["tasks"]["total"] > 0


def test_watch_yields_every_state_until_the_task_ends_and_resumes(ts: Client) -> None:
    task = ts.submit("echo", {"w": 1})
    states = [t for t in ts.watch(task.id)]  # ends by itself once the task is terminal
    assert states[-1].status == "succeeded" and states[-1].result == {"w": 1}
    versions = [t.version for t in states]
    assert versions == sorted(set(versions)), versions  # in order, no repeat
    with pytest.raises(NotFound):
        next(iter(ts.watch("no-such-task")))


def test_watch_all_pushes_matching_changes_and_resumes_from_a_change_id(ts: Client) -> None:
    import threading

    tag = f"h{uuid.uuid4().hex[:6]}"
    seen: list = []
    started = threading.Event()

    def follow() -> None:
        for change in ts.watch_all(status="failed"):
            started.set()
            if change.task.labels.get("tag") == tag:
                seen.append(change)
                if len(seen) == 2:
                    return

    ts.submit("noop")  # a change that does not match: not pushed
    t = threading.Thread(target=follow, daemon=True)
    t.start()
    first = ts.submit("fail", labels={"tag": tag})
    ts.wait(first.id, timeout=30)
    second = ts.submit("fail", labels={"tag": tag})
    ts.wait(second.id, timeout=30)
    t.join(30)
    assert [c.task.id for c in seen] == [first.id, second.id] and {c.task.status for c in seen} == {"failed"}
    # resuming after the first change gives the second again, and nothing before it
    with Client(ts.url) as again:
        resumed = next(c for c in again.watch_all(status="failed", cursor=seen[0].id)
                       if c.task.labels.get("tag") == tag)
    assert resumed.task.id == second.id and resumed.id == seen[1].id


def test_url_from_the_environment(stack, monkeypatch) -> None:
    monkeypatch.setenv("TASKSTREAM_URL", stack.url + "/")
    with Client() as c:
        assert c.url == stack.url and c.ready()


# ----------------------------------------------------------------- async


def test_async_client_does_the_same(stack) -> None:
    async def main() -> None:
        async with AsyncClient(stack.url) as ts:
            ok, bad = await asyncio.gather(ts.submit("echo", {"a": 1}), ts.submit("fail"))
            done, failed = await asyncio.gather(ts.wait(ok.id, timeout=30), ts.wait(bad.id, timeout=30))
            assert done.status == "succeeded" and done.result == {"a": 1}
            assert failed.status == "failed"
            assert_redriven(await ts.retry(failed.id), failed)
            assert (await ts.get(ok.id)).version == done.version
            later = await ts.submit("noop", run_at=LATER, labels={"async": "yes"})
            with pytest.raises(PreconditionFailed):
                await ts.update(later.id, if_match=later.version + 5, priority="low")
            assert (await ts.update(later.id, if_match=later.version, priority="low")).priority == "low"
            listed = [t.id async for t in ts.list(labels={"async": "yes"}, page_size=1)]
            assert later.id in listed
            assert [p async for p in ts.pages(labels={"async": "yes"}, limit=50)][0].items
            assert (await ts.cancel(later.id)).status == "cancelled"
            with pytest.raises(Conflict):
                await ts.cancel(later.id)
            with pytest.raises(NotFound):
                await ts.get("nope")
            with pytest.raises(ValidationFailed) as exc:
                await ts.submit("noop", priority="urgent")
            assert exc.value.field == "priority"
            assert [e.type for e in await ts.events(ok.id)][0] == "TaskCreated"
            wf = await ts.workflow([{"key": "x", "handler": "noop"}])
            assert (await ts.wait(wf.task_ids["x"], timeout=30)).succeeded
            run = await ts.wait_workflow(wf.workflow_id, timeout=30)
            assert run.succeeded and run.task("x").status == "succeeded"
            assert (await ts.get_workflow(wf.workflow_id)).counts == {"succeeded": 1}
            assert wf.workflow_id in [w.id async for w in ts.list_workflows(status="succeeded")]
            assert (await ts.workflows_page(limit=1)).items
            assert len(await ts.submit_many([task_body("noop")] * 2)) == 2
            s = await ts.create_schedule("0 4 * * *", {"handler": "noop"})
            assert s.id in [x.id async for x in ts.schedules()]
            assert (await ts.get_schedule(s.id)).status == "active"
            assert (await ts.delete_schedule(s.id)).status == "deleted"
            with pytest.raises(WaitTimeout):
                await ts.wait((await ts.submit("noop", run_at=LATER)).id, timeout=0.2)
            watched = await ts.submit("echo", {"watched": True})
            states = [t async for t in ts.watch(watched.id)]
            assert states[-1].status == "succeeded" and states[-1].result == {"watched": True}

    asyncio.run(main())


# ------------------------------------------------------ unreachable, broker down


def test_an_unreachable_api_is_unavailable_without_a_status() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url) as ts, pytest.raises(Unavailable) as exc:
        ts.get("x")
    assert exc.value.status is None and f"cannot reach the taskstream API at {url}" in str(exc.value)

    async def main() -> None:
        async with AsyncClient(url) as ts:
            with pytest.raises(Unavailable):
                await ts.stats()

    asyncio.run(main())


def test_api_up_broker_down_is_unavailable(tmp_path) -> None:
    """The API served in this process (uvicorn in a thread, 1 s produce timeout) on a broker of its own, then
    stopped."""
    import uvicorn

    from taskstream.api.app import create_app
    from taskstream.schemas import Settings, catalogue
    from taskstream.schemas.kafka import ensure_topics, wait_for_broker

    broker = KafkaBroker(free_port(), tmp_path / "kafka").start()
    port = free_port()
    s = Settings(bootstrap_servers=broker.bootstrap_servers, prefix="tdown", partitions=1,
                 data_dir=tmp_path / "data", log_level="WARNING")
    server = None
    thread = None
    try:
        wait_for_broker(s)
        assert ensure_topics(s, catalogue(s)) == []
        server = uvicorn.Server(uvicorn.Config(create_app(s, produce_timeout_s=1.0), host="127.0.0.1", port=port,
                                               log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        with Client(f"http://127.0.0.1:{port}") as ts:
            wait_until(lambda: _ready(ts), timeout=30, interval=0.2, message="ready")
            assert ts.submit("noop").task.status == "pending"
            broker.stop()
            with pytest.raises(Unavailable) as exc:
                ts.submit("noop")
            # the record had its partition: the client cannot tell whether the broker took it before it went away
            assert isinstance(exc.value, OutcomeUnknown)
            assert exc.value.status == 504 and exc.value.retry_after == 1.0
            assert exc.value.problem["type"].endswith(":write-outcome-unknown")
            with pytest.raises(Unavailable) as exc:
                wait_until(lambda: ts.ready() and False, timeout=10, interval=0.2)
            assert any("broker unreachable" in r for r in exc.value.problem["reasons"])
    finally:
        if server is not None:
            server.should_exit = True
            thread.join(15)
        broker.kill()


def _ready(ts: Client) -> bool:
    try:
        return bool(ts.ready())
    except Unavailable:
        return False


# --------------------------------------------------- auth and rate limit (stub)


class _Stub(BaseHTTPRequestHandler):
    """Answers like an API with authentication and a rate limit: token ``reader`` may read, ``admin`` may all."""

    seen: list[dict[str, str]] = []

    def _answer(self) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        _Stub.seen.append(headers)
        auth = headers.get("authorization", "")
        key = headers.get("x-api-key", "")
        if self.path.startswith("/api/v1/stats"):
            return self._send(429, {"type": "urn:taskstream:problem:rate-limited", "title": "Too many requests",
                                    "status": 429, "detail": "over 10 requests/s"}, {"Retry-After": "7"})
        if self.path.startswith("/readyz"):  # a proxy in front of the API, not the API
            self.send_response(502)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>bad gateway</html>")
            return
        if auth not in ("Bearer reader", "Bearer admin") and key != "k-admin":
            return self._send(401, {"type": "urn:taskstream:problem:unauthorized", "title": "Unauthorized",
                                    "status": 401, "detail": "missing or invalid credentials"},
                              {"WWW-Authenticate": "Bearer"})
        if self.command != "GET" and auth == "Bearer reader":
            return self._send(403, {"type": "urn:taskstream:problem:forbidden", "title": "Forbidden", "status": 403,
                                    "detail": "role reader may not submit tasks"})
        return self._send(404, {"type": "urn:taskstream:problem:not-found", "title": "Not found", "status": 404,
                                "detail": "task x not found"})

    def _send(self, status: int, doc: dict, headers: dict | None = None) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/problem+json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self._answer()

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_unauthorized_forbidden_and_credentials_sent(stub, monkeypatch) -> None:
    monkeypatch.delenv("TASKSTREAM_TOKEN", raising=False)
    monkeypatch.delenv("TASKSTREAM_API_KEY", raising=False)
    with Client(stub) as ts, pytest.raises(Unauthorized) as exc:
        ts.get("x")
    assert exc.value.status == 401 and exc.value.detail == "missing or invalid credentials"
    with Client(stub, token="reader") as ts:
        with pytest.raises(NotFound):
            ts.get("x")
        assert _Stub.seen[-1]["authorization"] == "Bearer reader"
        with pytest.raises(Forbidden) as exc:
            ts.submit("noop")
        assert exc.value.status == 403 and "role reader" in exc.value.detail
    monkeypatch.setenv("TASKSTREAM_API_KEY", "k-admin")
    with Client(stub) as ts, pytest.raises(NotFound):
        ts.get("x")
    assert _Stub.seen[-1]["x-api-key"] == "k-admin" and "authorization" not in _Stub.seen[-1]
    monkeypatch.setenv("TASKSTREAM_TOKEN", "admin")
    monkeypatch.delenv("TASKSTREAM_API_KEY")
    with Client(stub) as ts, pytest.raises(NotFound):
        ts.submit("noop")
    assert _Stub.seen[-1]["authorization"] == "Bearer admin"


def test_rate_limited_and_a_non_problem_error(stub) -> None:
    with Client(stub) as ts:
        with pytest.raises(RateLimited) as exc:
            ts.stats()
        assert exc.value.retry_after == 7.0 and exc.value.status == 429 and "over 10" in str(exc.value)
        with pytest.raises(ServerError) as exc:
            ts.ready()
        assert exc.value.status == 502 and "bad gateway" in exc.value.detail

    async def main() -> None:
        async with AsyncClient(stub, token="reader") as ts:
            with pytest.raises(RateLimited):
                await ts.stats()
            with pytest.raises(Forbidden):
                await ts.submit("noop")
        async with AsyncClient(stub, token="nobody") as ts:
            with pytest.raises(Unauthorized):
                await ts.get("x")

    asyncio.run(main())
