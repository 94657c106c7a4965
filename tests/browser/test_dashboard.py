"""The dashboard at /ui in headless Chromium against a live `taskstream dev` with real tasks.

Chromium is Debian's package (``make test`` installs it when missing),
driven by Playwright for Python through ``executable_path`` (no
``playwright install``). One ``taskstream dev`` (its own Kafka node,
a handler module of this file's) serves every test of the module. Each
test writes a screenshot of the page it checked to ``docs/screenshots/``
(docs/dashboard.md shows them).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import textwrap
from pathlib import Path

import httpx
import pytest

from taskstream.cli.broker import free_port
from tests.conftest import wait_until
from tests.integration.test_e2e import child_env, dev_cmd, tail

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.browser]

#: Where each run writes its screenshots (ignored by git); the copies docs/dashboard.md shows are refreshed with
#: ``TASKSTREAM_SCREENSHOTS=docs/screenshots make test``.
SCREENSHOTS = Path(os.environ.get("TASKSTREAM_SCREENSHOTS")
                   or Path(__file__).resolve().parents[2] / "build" / "screenshots")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TERMINAL = {"succeeded", "failed", "cancelled", "upstream_failed"}
#: app.js STATUS_COLORS: the fill of a workflow node of each status.
STATUS_COLORS = {"pending": "#9aa5b1", "scheduled": "#7c8fd6", "queued": "#4c9be8", "running": "#f0a030",
                 "succeeded": "#2e9e5b", "failed": "#d64545", "cancelled": "#6b6b6b", "upstream_failed": "#b0568f"}

HANDLERS = """
from taskstream.executors import PermanentError, handler


@handler("ui.flaky")
def flaky(payload, ctx):
    if ctx.attempt <= payload.get("fail_until", 0):
        raise RuntimeError(f"attempt {ctx.attempt} failed on purpose")
    return {"ok": True, "attempt": ctx.attempt}


@handler("ui.broken")
def broken(payload, ctx):
    raise PermanentError("broken on purpose: " + str(payload.get("why", "")))


@handler("ui.ok")
def ok(payload, ctx):
    return {"n": payload.get("n"), "echo": payload}
"""

XSS = "<script>window.__pwned = 1</script><img src=x onerror='window.__pwned = 2'>"
FAST_RETRY = {"max_attempts": 3, "backoff": {"initial_s": 0.2, "multiplier": 1, "max_s": 1, "jitter": 0}}

pytest.importorskip("playwright.sync_api")
if CHROMIUM is None:  # make test installs it; a bare pytest run on a machine without it skips
    pytest.skip("chromium is not installed (make test installs Debian's chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A `taskstream dev` with this file's handlers: yields its base URL."""
    tmp = tmp_path_factory.mktemp("ui-dev")
    (tmp / "ui_handlers.py").write_text(textwrap.dedent(HANDLERS))
    api_port, broker_port = free_port(), free_port()
    log_path = tmp / "dev.log"
    with open(log_path, "wb") as log:
        dev = subprocess.Popen(dev_cmd(api_port, broker_port, "ui_handlers"), cwd=tmp,
                               env={**child_env(), "TASKSTREAM_HEARTBEAT_INTERVAL_S": "0.5"},
                               stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{api_port}"
    try:
        def ready() -> bool:
            assert dev.poll() is None, f"dev exited with {dev.returncode}:\n{tail(log_path)}"
            try:
                return httpx.get(f"{base}/readyz", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout=120, interval=0.3, message="dev's API ready")
        yield base
    finally:
        if dev.poll() is None:
            dev.send_signal(signal.SIGTERM)
            try:
                dev.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(dev.pid, signal.SIGKILL)
                dev.wait()


@pytest.fixture(scope="module")
def http(stack):
    with httpx.Client(base_url=stack, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def page(browser, stack):
    context = browser.new_context(base_url=stack, viewport={"width": 1360, "height": 900},
                                  timezone_id="UTC")  # times typed into the page are read in UTC
    pg = context.new_page()
    pg.errors = []
    pg.on("pageerror", lambda exc: pg.errors.append(str(exc)))
    pg.on("dialog", lambda dialog: dialog.accept())  # confirmation of cancel, retry, redrive, delete
    yield pg
    context.close()


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def submit(http: httpx.Client, **task) -> str:
    r = http.post("/api/v1/tasks", json=task)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def wait_status(http: httpx.Client, task_id: str, statuses: set[str], timeout: float = 60) -> dict:
    def check():
        task = http.get(f"/api/v1/tasks/{task_id}").json()
        return task if task["status"] in statuses else None
    return wait_until(check, timeout=timeout, interval=0.2, message=f"task {task_id} in {statuses}")


def counts_match(page, http) -> bool:
    by_status = http.get("/api/v1/stats").json()["tasks"]["by_status"]
    shown = page.eval_on_selector_all("[data-status-count]", "ns => Object.fromEntries(ns.map(n => "
                                      "[n.dataset.statusCount, n.textContent]))")
    return shown == {k: str(v) for k, v in by_status.items()}


# ---------------------------------------------------------------- tests


def test_overview_shows_the_counts_the_api_reports(page, http) -> None:
    ids = [submit(http, handler="ui.ok", payload={"n": n}, priority=("high", "medium", "low")[n % 3],
                  labels={"suite": "overview"}) for n in range(30)]
    ids.append(submit(http, handler="sleep", payload={"seconds": 3}, name="a long one"))  # heartbeats
    ids.append(submit(http, handler="ui.ok", run_at="2099-01-01T00:00:00Z", name="far future"))  # stays scheduled
    for task_id in ids[:-2]:
        wait_status(http, task_id, TERMINAL)
    page.goto("/ui")
    wait_until(lambda: counts_match(page, http), timeout=15, interval=0.5, message="overview counts = /stats")
    assert page.text_content("#total-count") == str(http.get("/api/v1/stats").json()["tasks"]["total"])
    # the charts are drawn: one bar per status and per priority, latency columns
    assert page.locator("#chart-status rect").count() == 8
    assert page.locator("#chart-priority rect[data-label=high]").get_attribute("data-value") == \
        str(http.get("/api/v1/stats").json()["tasks"]["by_priority"]["high"])
    page.wait_for_selector("#chart-latency svg")
    # throughput: the tasks just finished are in the newest columns (from the API's own history)
    wait_until(lambda: page.eval_on_selector_all("#chart-throughput rect",
                                                 "rs => rs.some(r => +r.getAttribute('height') > 0)"),
               timeout=15, message="a throughput column")
    wait_status(http, ids[-2], {"succeeded"})
    page.wait_for_selector("#heartbeats td.mono", timeout=15000)  # the sleep task's executor heartbeated
    if page.text_content("#ready") == "ready":  # /readyz flips to 503 briefly when a group describe times out
        assert page.is_hidden("#not-ready")
    else:
        assert page.locator("#ready-reasons li").count() >= 1
    page.wait_for_timeout(2500)  # one more refresh with the latest figures before the picture
    assert counts_match(page, http) or wait_until(lambda: counts_match(page, http), timeout=10)
    shot(page, "overview")
    assert page.errors == []

    page.goto("/ui/tasks?label=suite:overview&limit=25")
    page.wait_for_selector("#tasks tr[data-status=succeeded]")
    assert page.locator("#tasks tr").count() == 25
    first = page.locator("#tasks tr").first.get_attribute("data-id")
    page.click("#next")  # cursor paging
    wait_until(lambda: page.text_content("#page-no") == "page 2", timeout=10, message="page 2")
    wait_until(lambda: page.locator("#tasks tr").count() == 5, timeout=10, message="the last 5 tasks")
    assert first not in row_ids(page)
    page.click("#prev")
    wait_until(lambda: page.locator("#tasks tr").first.get_attribute("data-id") == first, timeout=10)
    shot(page, "tasks")
    page.fill("#search-id", ids[0])
    page.click("#search button")
    page.wait_for_url(f"**/ui/tasks/{ids[0]}")
    assert page.errors == []


def test_failing_task_shows_retries_and_its_retry_button_redrives_it(page, http) -> None:
    task_id = submit(http, handler="ui.flaky", payload={"fail_until": 3}, name="flaky import",
                     retry=FAST_RETRY, labels={"team": "data"})
    wait_status(http, task_id, {"failed"})

    page.goto("/ui/tasks?status=failed")
    row = page.locator(f"tr[data-id='{task_id}']")
    row.wait_for(timeout=10000)
    assert row.get_attribute("data-status") == "failed"

    page.goto("/ui/dead-letters")
    page.locator(f"#dead tr[data-id='{task_id}']").wait_for(timeout=10000)

    page.goto(f"/ui/tasks/{task_id}")
    page.wait_for_selector("#timeline li[data-type=TaskFailed]")
    wait_until(lambda: page.locator("#timeline li[data-type=TaskFailed]").count() == 3, timeout=10,
               message="three failures in the timeline")
    failed = page.locator("#timeline li[data-type=TaskFailed]")
    assert [failed.nth(i).locator(".attempt").text_content() for i in range(3)] == \
        ["attempt 1", "attempt 2", "attempt 3"]
    assert "attempt 2 failed on purpose" in failed.nth(1).text_content()
    assert page.text_content("#status") == "failed"
    assert "attempt 3 failed on purpose" in page.text_content("#error")
    producers = page.locator("#timeline .producer").all_text_contents()
    assert all(producers) and len(set(producers)) >= 2  # the API, the processor, the executor
    # time travel: as of the first failure the task was on attempt 1
    first_failure = page.locator("#timeline li[data-type=TaskFailed] .time").first
    first_failure.click()
    page.wait_for_selector("#as-of-fields tr[data-field=attempt]")
    assert page.text_content("#as-of-fields tr[data-field=attempt] td") == "1"
    assert page.text_content("#as-of-title").startswith("As of ")
    shot(page, "task-failed")

    page.click("#retry")  # the dialog is accepted by the fixture
    wait_until(lambda: "accepted" in page.text_content("#action-result"), timeout=10, message="retry accepted")
    wait_status(http, task_id, {"succeeded"})
    page.wait_for_selector("#timeline li[data-type=TaskRedriven]", timeout=15000)
    wait_until(lambda: page.text_content("#status") == "succeeded", timeout=15, message="page shows succeeded")
    assert '"attempt": 4' in page.text_content("#result")

    page.click("#cancel")  # refused: the API's problem text is shown
    wait_until(lambda: "refused" in page.text_content("#action-result"), timeout=10, message="cancel refused")
    assert "already succeeded" in page.text_content("#action-result")
    shot(page, "task-redriven")
    assert page.errors == []


def test_workflow_graph_colours_nodes_by_status(page, http) -> None:
    r = http.post("/api/v1/workflows", json={"tasks": [
        {"key": "extract", "handler": "ui.ok", "payload": {"n": 1}},
        {"key": "transform", "handler": "ui.ok", "depends_on": ["extract"]},
        {"key": "load", "handler": "ui.broken", "depends_on": ["transform"], "payload": {"why": "disk full"}},
        {"key": "report", "handler": "ui.ok", "depends_on": ["load"]},
        {"key": "notify", "handler": "ui.ok", "depends_on": ["report", "audit"]},
        {"key": "audit", "handler": "ui.ok", "depends_on": ["extract"]},
        {"key": "later", "handler": "ui.ok", "run_at": "2099-01-01T00:00:00Z"},
    ]})
    assert r.status_code == 202, r.text
    wid, ids = r.json()["workflow_id"], r.json()["tasks"]
    expected = {"extract": "succeeded", "transform": "succeeded", "load": "failed", "report": "upstream_failed",
                "notify": "upstream_failed", "audit": "succeeded", "later": "scheduled"}
    for key, status in expected.items():
        wait_status(http, ids[key], {status})

    page.goto(f"/ui/tasks/{ids['load']}")
    page.click("#workflow-link")
    page.wait_for_url(f"**/ui/workflows/{wid}")
    page.wait_for_selector("svg.dag a.node")
    assert page.locator("svg.dag a.node").count() == len(expected)
    for key, status in expected.items():
        node = page.locator(f"svg.dag a.node[data-key='{key}']")
        assert node.get_attribute("data-status") == status
        assert node.locator("rect").get_attribute("fill") == STATUS_COLORS[status]
        assert node.get_attribute("href") == f"/ui/tasks/{ids[key]}"
    assert page.locator("svg.dag path.edge").count() == 6
    shot(page, "workflow")
    page.locator("svg.dag a.node[data-key='report']").click()
    page.wait_for_url(f"**/ui/tasks/{ids['report']}")
    assert page.locator("#status").text_content() in ("…", "upstream_failed")
    # ids, not URLs: depends_on shows the upstream task's id, linked to its page
    wait_until(lambda: page.locator("#fields tr[data-field='depends_on'] a.id").count() == 1, timeout=20,
               message="depends_on as a link (it was shown as the link's URL)")
    link = page.locator("#fields tr[data-field='depends_on'] a.id")
    assert link.get_attribute("href") == f"/ui/tasks/{ids['load']}"
    assert ids["load"].startswith(link.text_content().rstrip("…"))
    assert "/" not in page.locator("#fields tr[data-field='depends_on'] td").text_content()
    assert page.errors == []


def test_workflow_list_and_duration_view(page, http) -> None:
    r = http.post("/api/v1/workflows", json={"tasks": [
        {"key": "publish", "handler": "sleep", "payload": {"seconds": 0.3}, "depends_on": ["parse", "index"]},
        {"key": "parse", "handler": "sleep", "payload": {"seconds": 1.2}, "depends_on": ["fetch"]},
        {"key": "index", "handler": "ui.ok", "depends_on": ["fetch"]},
        {"key": "fetch", "handler": "sleep", "payload": {"seconds": 0.4}},
    ]})
    assert r.status_code == 202, r.text
    wid, ids = r.json()["workflow_id"], r.json()["tasks"]
    wait_until(lambda: http.get(f"/api/v1/workflows/{wid}").json()["status"] == "succeeded", timeout=60,
               interval=0.2, message="workflow succeeded")

    page.goto("/ui/workflows")
    row = page.locator(f"#workflows tr[data-id='{wid}']")
    row.wait_for()
    assert row.get_attribute("data-status") == "succeeded" and row.locator(".badge").text_content() == "succeeded"
    assert "4 succeeded" in row.text_content()
    page.select_option("#wf-status", "failed")
    page.wait_for_url("**/ui/workflows?status=failed")
    wait_until(lambda: page.locator(f"#workflows tr[data-id='{wid}']").count() == 0, timeout=10, message="filtered")
    page.select_option("#wf-status", "succeeded")
    page.locator(f"#workflows tr[data-id='{wid}']").wait_for()
    assert page.locator("#workflows tr .badge").evaluate_all("bs => [...new Set(bs.map(b => b.textContent))]") == [
        "succeeded"]
    page.select_option("#wf-status", "")
    page.wait_for_url("**/ui/workflows")
    page.locator(f"#workflows tr[data-id='{wid}']").wait_for()
    shot(page, "workflows")

    page.locator(f"#workflows tr[data-id='{wid}'] a").click()
    page.wait_for_url(f"**/ui/workflows/{wid}")
    page.wait_for_selector("svg.gantt-chart a.gantt-row rect.run")
    rows = page.locator("svg.gantt-chart a.gantt-row")
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.key)") == ["fetch", "index", "parse", "publish"]
    assert page.locator("#wf-status").text_content() == "succeeded"

    def bar(key: str) -> dict:
        run = page.locator(f"svg.gantt-chart a.gantt-row[data-key='{key}'] rect.run")
        return {"x": float(run.get_attribute("x")), "w": float(run.get_attribute("width")),
                "ms": int(run.get_attribute("data-ms")), "fill": run.get_attribute("fill")}

    fetch, parse, publish = bar("fetch"), bar("parse"), bar("publish")
    assert parse["ms"] >= 1200 and 400 <= fetch["ms"] < parse["ms"]
    assert parse["w"] > 2 * fetch["w"]  # widths follow run times on one axis
    assert parse["x"] >= fetch["x"] + fetch["w"] - 1 and publish["x"] >= parse["x"] + parse["w"] - 1  # order in time
    assert fetch["fill"] == STATUS_COLORS["succeeded"]
    assert page.locator("svg.gantt-chart a.gantt-row[data-key='parse']").get_attribute("href") == (
        f"/ui/tasks/{ids['parse']}")
    assert "4 succeeded" in page.locator("#wf-summary").text_content()
    shot(page, "workflow-duration")

    page.goto("/ui/workflows/no-such-workflow")
    page.wait_for_selector("#wf-error:not([hidden])")
    assert "not found" in page.locator("#wf-error").text_content()
    assert page.errors == []


def test_script_in_payload_name_labels_is_shown_as_text(page, http) -> None:
    task_id = submit(http, handler="ui.ok", name=XSS[:60], payload={"html": XSS}, labels={"note": "<b>bold</b>"})
    wait_status(http, task_id, {"succeeded"})
    page.goto(f"/ui/tasks/{task_id}")
    page.wait_for_function("document.getElementById('result').textContent.includes('script')")
    assert XSS in page.text_content("#payload")
    assert XSS in page.text_content("#result")
    assert page.text_content("#fields tr[data-field=name] td") == XSS[:60]
    page.goto("/ui/tasks?label=note:<b>bold</b>")
    page.locator(f"tr[data-id='{task_id}']").wait_for(timeout=10000)
    assert page.locator(f"tr[data-id='{task_id}'] td.labels").text_content() == "note:<b>bold</b>"
    for url in (f"/ui/tasks/{task_id}", "/ui/tasks"):
        page.goto(url)
        page.wait_for_timeout(1500)
        assert page.evaluate("window.__pwned") is None, "a payload's script ran"
        assert page.locator("img").count() == 0
        assert page.locator("b").count() == 0
        assert page.eval_on_selector_all("script", "s => s.map(x => x.getAttribute('src'))") == ["/ui/static/app.js"]
    # the page itself, before any script: the id in the URL is escaped by the template
    r = http.get("/ui/tasks/<img src=x onerror=alert(1)>")
    assert r.status_code == 200
    assert "<img" not in r.text and "&lt;img src=x onerror=alert(1)&gt;" in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert page.errors == []


def test_schedules_list_and_delete(page, http) -> None:
    r = http.post("/api/v1/schedules", json={"cron": "0 9 * * 1-5", "timezone": "Europe/Paris", "name": "daily report",
                                             "task": {"handler": "ui.ok", "payload": {"kind": "daily"}}})
    assert r.status_code == 202, r.text
    keep = http.post("/api/v1/schedules", json={"cron": "*/5 * * * *", "name": "every five minutes",
                                                "task": {"handler": "ui.ok"}}).json()["id"]
    sid = r.json()["id"]
    page.goto("/ui/schedules")
    row = page.locator(f"#schedules tr[data-id='{sid}']")
    row.wait_for(timeout=10000)
    assert "Europe/Paris" in row.text_content() and "0 9 * * 1-5" in row.text_content()
    assert page.locator(f"#schedules tr[data-id='{keep}']").count() == 1
    shot(page, "schedules")
    row.locator("button").click()
    wait_until(lambda: "deleted" in page.text_content("#sc-result"), timeout=10, message="schedule deleted")
    wait_until(lambda: http.get(f"/api/v1/schedules/{sid}").json()["status"] == "deleted", timeout=10)
    assert page.errors == []


def row_ids(page) -> list[str]:
    """The task ids of the list's rows, read in one step (the list may be drawn again between two reads)."""
    return page.eval_on_selector_all("#tasks tr[data-id]", "rows => rows.map(r => r.dataset.id)")


def test_task_list_searches_by_prefix_and_shows_durations(page, http) -> None:
    ids = [submit(http, handler="ui.ok", name=f"invoice-{n}") for n in range(3)]
    other = submit(http, handler="ui.ok", name="receipt")
    for task_id in (*ids, other):
        wait_status(http, task_id, {"succeeded"})
    page.goto("/ui/tasks")
    page.fill("#prefix", "invoice-")
    page.click("#filters button[type=submit]")
    wait_until(lambda: sorted(row_ids(page))
               == sorted(ids), timeout=10, message="only the invoice- tasks")
    assert "prefix=invoice-" in page.url
    durations = [d.strip() for d in page.locator("#tasks td.duration").all_text_contents()]
    assert len(durations) == 3 and all(d.endswith(("ms", " s")) for d in durations), durations
    page.fill("#prefix", other[:12])  # an id prefix
    page.click("#filters button[type=submit]")
    wait_until(lambda: row_ids(page) == [other],
               timeout=10, message="the task whose id starts so")
    shot(page, "tasks-search")
    assert page.errors == []


def test_schedule_page_pauses_resumes_runs_now_and_backfills(page, http) -> None:
    body = {"cron": "0 3 * * *", "name": "nightly export", "task": {"handler": "ui.ok", "payload": {"kind": "export"}}}
    sid = http.post("/api/v1/schedules", json=body).json()["id"]
    page.goto("/ui/schedules")
    page.locator(f"#schedules tr[data-id='{sid}'] a").click()
    page.wait_for_url(f"**/ui/schedules/{sid}")
    page.wait_for_selector("#sc-fields tr[data-field=status]")
    assert '"kind": "export"' in page.text_content("#sc-task")
    page.click("#sc-pause")
    wait_until(lambda: http.get(f"/api/v1/schedules/{sid}").json()["status"] == "paused", timeout=10)
    wait_until(lambda: page.get_attribute("body", "data-status") == "paused", timeout=10, message="shown paused")
    assert page.is_disabled("#sc-pause") and page.is_enabled("#sc-resume")
    page.click("#sc-run")
    page.wait_for_selector("#sc-result a.id", timeout=10000)
    task_id = page.text_content("#sc-result a.id")
    done = wait_status(http, task_id, {"succeeded"})
    assert done["schedule_id"] == sid and done["result"]["echo"] == {"kind": "export"}
    page.click("#sc-resume")
    wait_until(lambda: http.get(f"/api/v1/schedules/{sid}").json()["status"] == "active", timeout=10)
    wait_until(lambda: page.get_attribute("body", "data-status") == "active", timeout=10, message="shown active")
    shot(page, "schedule")

    # backfill three nights (03:00 UTC: the schedule's zone, and the browser context's) with at most one at once
    page.fill("#bf-start", "2026-01-05T00:00:00")
    page.fill("#bf-end", "2026-01-07T12:00:00")
    page.fill("#bf-max", "1")
    page.click("#bf-submit")
    page.wait_for_selector("#bf-tasks li", timeout=10000)
    ids = [li.get_attribute("data-id") for li in page.locator("#bf-tasks li").all()]
    assert len(ids) == 3 and "3 tasks" in page.text_content("#bf-result")
    runs = [wait_status(http, task_id, {"succeeded"}) for task_id in ids]
    assert [r["schedule_id"] for r in runs] == [sid] * 3
    shot(page, "schedule-backfill")
    page.fill("#bf-end", "2025-12-01T00:00:00")  # before the start: refused, naming the field
    page.click("#bf-submit")
    wait_until(lambda: "backfill refused" in page.text_content("#bf-result"), timeout=10, message="the refusal")
    assert page.errors == []


def test_dead_letters_redrive_selected(page, http) -> None:
    ids = [submit(http, handler="ui.flaky", payload={"fail_until": 1}, retry={"max_attempts": 1}) for _ in range(3)]
    for task_id in ids:
        wait_status(http, task_id, {"failed"})
    page.goto("/ui/dead-letters")
    for task_id in ids[:2]:
        page.locator(f"#dead tr[data-id='{task_id}'] input.pick").check()
    by_status = http.get("/api/v1/stats").json()["tasks"]["by_status"]
    wait_until(lambda: page.text_content("#dl-count") ==
               f"in all: {by_status['failed']} failed, {by_status['upstream_failed']} upstream_failed", timeout=10)
    shot(page, "dead-letters")
    page.click("#redrive-selected")
    wait_until(lambda: "2 redriven" in page.text_content("#dl-result"), timeout=10, message="two redriven")
    for task_id in ids[:2]:
        wait_status(http, task_id, {"succeeded"})
    assert http.get(f"/api/v1/tasks/{ids[2]}").json()["status"] == "failed"
    assert page.errors == []


def test_not_ready_reasons_and_the_api_key_go_through_one_fetch(page, http) -> None:
    """/readyz's reasons are listed; a key typed in the header goes on every API request as a bearer token."""
    import json

    seen: list[str | None] = []

    def not_ready(route) -> None:
        route.fulfill(status=503, content_type="application/problem+json", body=json.dumps({
            "title": "Not ready", "status": 503, "detail": "topics missing: t.events",
            "reasons": ["topics missing: t.events", "read model not caught up: <b>catching up</b>"]}))

    def spy(route) -> None:
        seen.append(route.request.headers.get("authorization"))
        route.continue_()

    page.route("**/readyz", not_ready)  # the browser's answer only: the stack behind is untouched
    page.route("**/api/v1/stats", spy)
    page.goto("/ui")
    page.wait_for_selector("#not-ready:not([hidden]) li")
    assert page.locator("#ready-reasons li").all_text_contents() == [
        "topics missing: t.events", "read model not caught up: <b>catching up</b>"]
    assert page.text_content("#ready") == "not ready"
    assert seen and seen[-1] is None  # no key typed: no header
    page.fill("#api-key", "s3cret")
    # (awaited through Playwright: a sleeping wait would not let the browser's events through)
    with page.expect_request(lambda r: "/api/v1/stats" in r.url and r.headers.get("authorization") == "Bearer s3cret",
                             timeout=20_000):
        page.press("#api-key", "Enter")  # saved for the tab, page reloaded
    page.goto("/ui/tasks")
    assert page.input_value("#api-key") == "s3cret"
    assert page.errors == []


def test_a_failed_task_s_traceback_opens_from_a_collapsed_details(page, http) -> None:
    task_id = submit(http, handler="ui.flaky", payload={"fail_until": 1}, name="why it failed",
                     retry={"max_attempts": 1})
    wait_status(http, task_id, {"failed"})
    page.goto(f"/ui/tasks/{task_id}")
    page.wait_for_selector("#traceback-box:not([hidden])")
    assert page.text_content("#traceback-type") == "RuntimeError"
    assert page.get_attribute("#traceback-box", "open") is None and not page.is_visible("#traceback")  # collapsed
    page.click("#traceback-box summary")
    page.wait_for_selector("#traceback", state="visible")
    text = page.text_content("#traceback")
    assert text.startswith("Traceback (most recent call last):") and ", in flaky" in text
    assert text.endswith("RuntimeError: attempt 1 failed on purpose") and "_attempt.py" not in text
    assert page.text_content("#fields tr[data-field=error_type] td") == "RuntimeError"
    shot(page, "task-traceback")

    ok = submit(http, handler="ui.ok", payload={"n": 1})
    wait_status(http, ok, {"succeeded"})
    page.goto(f"/ui/tasks/{ok}")
    page.wait_for_selector("#status.status-succeeded")
    assert page.is_hidden("#traceback-box")
    assert page.errors == []
