"""The Limits page at /ui/limits in headless Chromium against a live `taskstream dev` (the dashboard's stack).

Three long tasks share a concurrency key with limit 1: the page, reached
from the navigation, shows the key holding 1 of 1 with 2 waiting, held by
its limit, the holder and the next in line linked to their task pages; the
"only keys in use" filter keeps it. A handler limit and rate set with ``PUT
/api/v1/limits/handlers/{handler}`` and a paused handler are listed under
Handlers. Cancelled, the key shows nobody holding or waiting. The
screenshot goes to ``docs/screenshots/limits.png`` when
``TASKSTREAM_SCREENSHOTS=docs/screenshots``.
"""

from __future__ import annotations

import pytest

from tests.browser.test_dashboard import browser, http, page, shot, stack, submit  # noqa: F401, F811  (fixtures)
from tests.conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.browser]

KEY = "ui-tenant-7"


def row(pg) -> dict | None:
    return pg.evaluate("""key => {
        const r = document.querySelector(`#limits tr[data-key='${key}']`);
        return r && { holding: r.querySelector('.holding').textContent,
                      waiting: r.querySelector('.waiting').textContent, blocked: r.dataset.blocked,
                      links: [...r.querySelectorAll('a')].map(a => a.getAttribute('href')) }; }""", KEY)


def handler_rows(pg) -> dict:
    return pg.evaluate("""() => Object.fromEntries([...document.querySelectorAll('#handler-limits tr[data-handler]')]
        .map(r => [r.dataset.handler, { limit: r.querySelector('.limit').textContent,
                                        rate: r.querySelector('.rate').textContent, paused: r.dataset.paused }]))""")


def test_limits_page_shows_a_key_s_holder_and_waiters(page, http) -> None:  # noqa: F811
    ids = [submit(http, handler="sleep", payload={"seconds": 60, "n": i}, name=f"limited {i}",
                  concurrency={"key": KEY, "limit": 1}) for i in range(3)]
    r = http.put("/api/v1/limits/handlers/ui.limited", json={"limit": 3, "rate": 4, "per_s": 2})
    assert r.status_code == 202, r.text
    assert http.post("/api/v1/handlers/ui.paused:pause").status_code == 202
    try:
        page.goto("/ui")
        page.click("nav a[href='/ui/limits']")
        page.wait_for_url("**/ui/limits")
        shown = wait_until(lambda: (r := row(page)) and r["holding"] == "1/1" and r["waiting"] == "2" and r,
                           timeout=30, interval=0.2, message="the key holding 1/1 with 2 waiting")
        assert shown["blocked"] == "limit"
        assert sorted(shown["links"]) == sorted(f"/ui/tasks/{t}" for t in ids)
        handlers = wait_until(lambda: (h := handler_rows(page)) and {"ui.limited", "ui.paused"} <= set(h) and h,
                              timeout=10, interval=0.2, message="the handler limit and the pause under Handlers")
        assert handlers["ui.limited"] == {"limit": "3", "rate": "4 per 2 s", "paused": "false"}
        assert handlers["ui.paused"] == {"limit": "–", "rate": "–", "paused": "true"}
        page.check("#lm-active")
        wait_until(lambda: row(page) is not None, timeout=10, message="the key among the keys in use")
        shot(page, "limits")
        assert not page.errors
    finally:
        for t in ids:
            http.delete(f"/api/v1/tasks/{t}")
        http.delete("/api/v1/limits/handlers/ui.limited")
        http.post("/api/v1/handlers/ui.paused:resume")
    page.uncheck("#lm-active")
    wait_until(lambda: (r := row(page)) and r["holding"] == "0/1" and r["waiting"] == "0", timeout=30, interval=0.2,
               message="the key idle once its tasks are cancelled")
