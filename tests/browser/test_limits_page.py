"""The Limits page at /ui/limits in headless Chromium against a live `taskstream dev` (the dashboard's stack).

Three long tasks share a concurrency key with limit 1: the page, reached
from the navigation, shows the key holding 1 of 1 with 2 waiting, held by
its limit, the holder and the next in line linked to their task pages; the
"only keys in use" filter keeps it. Cancelled, the key shows nobody holding
or waiting. The screenshot goes to ``docs/screenshots/limits.png`` when
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


def test_limits_page_shows_a_key_s_holder_and_waiters(page, http) -> None:  # noqa: F811
    ids = [submit(http, handler="sleep", payload={"seconds": 60, "n": i}, name=f"limited {i}",
                  concurrency={"key": KEY, "limit": 1}) for i in range(3)]
    try:
        page.goto("/ui")
        page.click("nav a[href='/ui/limits']")
        page.wait_for_url("**/ui/limits")
        shown = wait_until(lambda: (r := row(page)) and r["holding"] == "1/1" and r["waiting"] == "2" and r,
                           timeout=30, interval=0.2, message="the key holding 1/1 with 2 waiting")
        assert shown["blocked"] == "limit"
        assert sorted(shown["links"]) == sorted(f"/ui/tasks/{t}" for t in ids)
        page.check("#lm-active")
        wait_until(lambda: row(page) is not None, timeout=10, message="the key among the keys in use")
        shot(page, "limits")
        assert not page.errors
    finally:
        for t in ids:
            http.delete(f"/api/v1/tasks/{t}")
    page.uncheck("#lm-active")
    wait_until(lambda: (r := row(page)) and r["holding"] == "0/1" and r["waiting"] == "0", timeout=30, interval=0.2,
               message="the key idle once its tasks are cancelled")
