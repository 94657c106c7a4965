"""The dashboard's server side without a broker: page shells, escaping, static files, the workflow gatherer."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from taskstream.api.read_model import TaskStore
from taskstream.api.reads import MAX_WORKFLOW_TASKS
from taskstream.api.ui import router
from taskstream.schemas import TaskState

T0 = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


@pytest.fixture
def client():
    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as c:
        yield c


@pytest.fixture
def store(tmp_path: Path):
    s = TaskStore(tmp_path / "rm")
    yield s
    s.close()


def state(task_id: str, *, created: float = 0, workflow_id: str | None = None, depends_on=(), dependents=(),
          key: str | None = None) -> TaskState:
    at = T0 + timedelta(seconds=created)
    return TaskState(task_id=task_id, handler="h", status="pending", priority="medium", payload="{}",
                     created_at=at, updated_at=at, version=1, workflow_id=workflow_id, key=key,
                     depends_on=list(depends_on), dependents=list(dependents))


@pytest.mark.parametrize("path", ["/ui", "/ui/", "/ui/tasks", "/ui/tasks/abc", "/ui/workflows/w", "/ui/workflows",
                                  "/ui/dead-letters", "/ui/schedules"])
def test_every_page_is_a_shell_with_a_strict_csp(client, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert '<script src="/ui/static/app.js" defer></script>' in r.text
    assert r.text.count("<script") == 1  # no inline script: data is never in the page


def test_ids_from_the_url_are_escaped(client) -> None:
    r = client.get('/ui/tasks/"><img src=x onerror=alert(1)>')
    assert "<img" not in r.text
    assert 'data-task-id="&#34;&gt;&lt;img src=x onerror=alert(1)&gt;"' in r.text


def test_static_files_are_a_fixed_list(client) -> None:
    assert client.get("/ui/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/static/app.css").status_code == 200
    assert client.get("/ui/static/..%2Froutes.py").status_code == 404
    assert client.get("/ui/static/routes.py").status_code == 404


def test_the_script_never_writes_html() -> None:
    path = Path(router.routes[0].endpoint.__code__.co_filename).parent / "static" / "app.js"
    source = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("//"))
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in source


def test_a_workflow_read_is_bounded(store: TaskStore) -> None:
    import asyncio
    from types import SimpleNamespace

    from taskstream.api.reads import get_workflow

    n = MAX_WORKFLOW_TASKS + 50
    for i in range(n):
        store.apply(state(f"t{i:05d}", workflow_id="big"))
    wf = asyncio.run(get_workflow(SimpleNamespace(read_model=SimpleNamespace(store=store)), "big"))
    assert wf.truncated and len(wf.tasks) == MAX_WORKFLOW_TASKS and wf.summary.tasks == n


def test_latency_histogram() -> None:
    from taskstream.api.ui.routes import latency_histogram

    def done(i: int, seconds: float) -> TaskState:
        s = state(f"t{i}")
        return replace(s, status="succeeded", started_at=s.created_at,
                       finished_at=s.created_at + timedelta(seconds=seconds))

    h = latency_histogram([done(0, 0.05), done(1, 0.3), done(2, 0.3), done(3, 1000)])
    assert h["count"] == 4
    assert [b["count"] for b in h["buckets"]] == [1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert h["buckets"][-1]["le"] is None
    assert h["total_s"] == {"p50": 0.3, "p95": 1000.0, "max": 1000.0}
    assert latency_histogram([])["total_s"]["p50"] is None


def test_throughput_history_keeps_what_the_read_model_forgets() -> None:
    from collections import Counter

    from taskstream.api.ui.routes import ThroughputHistory

    h = ThroughputHistory(started=1000)
    h.sample({1001: Counter(succeeded=2), 1002: Counter(failed=1)}, now=1003)
    h.sample({1002: Counter(failed=1, succeeded=1), 1070: Counter(succeeded=5)}, now=1071)  # 1001 left the window
    cols = h.columns(span_s=90, step_s=30, now=1079)
    assert [c["start"] for c in cols] == [990, 1020, 1050]
    assert cols[0]["by_status"] == {"succeeded": 3, "failed": 1}
    assert cols[1]["by_status"] == {}
    assert cols[2]["by_status"] == {"succeeded": 5}
    assert [c["known"] for c in cols] == [True, True, True]
    assert h.columns(span_s=60, step_s=30, now=1010)[0]["known"] is False  # before the API started


def test_ui_reads_stay_fast_with_100000_tasks(tmp_path: Path, monkeypatch) -> None:
    """The dashboard's reads are pages and counters: with 100,000 tasks none decodes more than a few thousand.

    (What it costs is counted, not timed: a timed bound measures the machine.)"""
    from types import SimpleNamespace

    from taskstream.api.history import ReadLimits
    from taskstream.api.routes import tasks as task_routes
    from taskstream.api.routes import workflows as workflow_routes

    store = TaskStore(tmp_path / "rm")
    try:
        for i in range(100_000):
            in_workflow = 50_000 <= i < 50_010  # one POST /workflows: one created_at
            s = state(f"t{i:06d}", created=50.0 if in_workflow else i / 1000, workflow_id="w" if in_workflow else None)
            store.apply(replace(s, status="succeeded", started_at=s.created_at,
                                finished_at=s.created_at + timedelta(seconds=0.5)))
        app = FastAPI()
        app.include_router(router)
        app.include_router(task_routes.router)
        app.include_router(workflow_routes.router)
        decoded = []
        real_decode = TaskStore._decode
        monkeypatch.setattr(TaskStore, "_decode", staticmethod(lambda raw, task_id: (
            decoded.append(task_id), real_decode(raw, task_id))[1]))
        app.state.context = SimpleNamespace(read_model=SimpleNamespace(store=store), read_limits=ReadLimits())
        with TestClient(app) as client:
            for path in ("/ui/api/latency?limit=500", "/api/v1/workflows/w", "/api/v1/workflows?limit=50",
                         "/ui/api/throughput",
                         "/api/v1/tasks?limit=50", "/api/v1/tasks?status=succeeded&handler=h&label=a:b&limit=50"):
                decoded.clear()
                r = client.get(path)
                assert r.status_code == 200, (path, r.text)
                assert len(decoded) <= 12_000, (path, len(decoded))  # bounded pages and scans, never the 100,000
            assert len(client.get("/api/v1/workflows/w").json()["tasks"]) == 10
            assert client.get("/ui/api/latency?limit=500").json()["count"] == 500
    finally:
        store.close()


def test_the_router_lifespan_samples_the_read_model(monkeypatch) -> None:
    from collections import Counter
    from types import SimpleNamespace

    from taskstream.api.ui import routes

    monkeypatch.setattr(routes, "SAMPLE_S", 0.05)
    now = int(time.time())
    store = SimpleNamespace(finished_by_second=lambda: {now: Counter(succeeded=7)})
    app = FastAPI()
    app.state.context = SimpleNamespace(read_model=SimpleNamespace(store=store))
    app.include_router(router)
    with TestClient(app):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
                c["by_status"] for c in routes.history(app).columns(60, 30)):
            time.sleep(0.05)
    assert sum(c["by_status"].get("succeeded", 0) for c in routes.history(app).columns(60, 30)) == 7
