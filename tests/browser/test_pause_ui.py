"""Pausing a handler from the dashboard, in headless Chromium against a live `taskstream dev` (the dashboard's stack).

On the Workers page a click on a handler's chip pauses it: the chip turns
``(paused)`` and ``GET /api/v1/pauses`` lists it. A task of that handler
submitted then stays ``pending`` on its task page, its ``waiting_for``
field ``paused:handler:<name>``. A second click resumes the handler and the
task page shows the task succeeded. The screenshot goes to
``docs/screenshots/pause.png`` when ``TASKSTREAM_SCREENSHOTS=docs/screenshots``.
"""

from __future__ import annotations

import pytest

from tests.browser.test_dashboard import browser, http, page, shot, stack, submit  # noqa: F401, F811  (fixtures)
from tests.conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.browser]

HANDLER = "ui.ok"
CHIP = f"button.chip[data-handler='{HANDLER}']"


def chip_text(pg) -> str | None:
    return pg.evaluate("sel => { const c = document.querySelector(sel); return c && c.textContent; }", CHIP)


def task_shown(pg) -> dict:
    return pg.evaluate("""() => {
        const f = document.querySelector("#fields tr[data-field='waiting_for'] td");
        return { status: document.querySelector('#status').textContent, waiting_for: f && f.textContent }; }""")


def test_a_handler_paused_from_the_workers_page_holds_its_task_until_resumed(page, http) -> None:  # noqa: F811
    page.goto("/ui")
    page.click("nav a[href='/ui/workers']")
    page.wait_for_url("**/ui/workers")
    wait_until(lambda: chip_text(page) == HANDLER, timeout=30, interval=0.2, message="the handler's chip")
    page.click(CHIP)
    try:
        wait_until(lambda: chip_text(page) == f"{HANDLER} (paused)", timeout=30, interval=0.2,
                   message="the chip shows the handler paused")
        assert "handler-paused" in (page.get_attribute(CHIP, "class") or "")
        assert [p["name"] for p in http.get("/api/v1/pauses").json()["pauses"]] == [HANDLER]

        task_id = submit(http, handler=HANDLER, payload={"n": 1}, name="held by a pause")
        page.goto(f"/ui/tasks/{task_id}")
        wait_until(lambda: task_shown(page) == {"status": "pending", "waiting_for": f"paused:handler:{HANDLER}"},
                   timeout=30, interval=0.2, message="the task pending, waiting for the pause")
        shot(page, "pause")

        page.goto("/ui/workers")
        wait_until(lambda: chip_text(page) == f"{HANDLER} (paused)", timeout=30, interval=0.2,
                   message="the paused chip again")
        page.click(CHIP)
        wait_until(lambda: chip_text(page) == HANDLER, timeout=30, interval=0.2, message="the chip shows it resumed")
    finally:
        http.post(f"/api/v1/handlers/{HANDLER}:resume")  # whatever happened, the module's other tests run
    assert http.get("/api/v1/pauses").json()["pauses"] == []
    page.goto(f"/ui/tasks/{task_id}")
    wait_until(lambda: task_shown(page)["status"] == "succeeded", timeout=60, interval=0.2,
               message="the released task succeeded")
    assert not page.errors
