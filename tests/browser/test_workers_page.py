"""The Workers page at /ui/workers in headless Chromium against a live `taskstream dev` with two executors.

Its own ``taskstream dev`` (``--executors 2``, a report every 0.5 s), the
browser fixtures of ``test_dashboard``: the page lists both executors with
their partitions and handlers and a long task among the tasks in flight;
one SIGKILLed turns ``gone`` (dev starts a new one, which appears alive).
The screenshot goes to ``docs/screenshots/workers.png`` when
``TASKSTREAM_SCREENSHOTS=docs/screenshots``.
"""

from __future__ import annotations

import os
import signal
import subprocess

import httpx
import pytest

from taskstream.cli.broker import free_port
from tests.browser.test_dashboard import browser, http, page, shot, submit  # noqa: F401, F811  (fixtures here too)
from tests.conftest import wait_until
from tests.integration.test_e2e import child_env, dev_cmd, tail

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.browser]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A `taskstream dev` with two executors reporting every 0.5 s: yields its base URL."""
    tmp = tmp_path_factory.mktemp("workers-dev")
    api_port, broker_port = free_port(), free_port()
    log_path = tmp / "dev.log"
    with open(log_path, "wb") as log:
        dev = subprocess.Popen([*dev_cmd(api_port, broker_port), "--executors", "2"], cwd=tmp,
                               env={**child_env(), "TASKSTREAM_WORKER_REPORT_INTERVAL_S": "0.5"},
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


def rows(pg) -> dict[str, str]:
    """Executor id -> status of every row of the table."""
    return dict(pg.eval_on_selector_all("#workers tr[data-id]",
                                          "rs => rs.map(r => [r.dataset.id, r.dataset.status])"))


def test_workers_page_lists_executors_and_shows_a_killed_one_gone(page, http) -> None:  # noqa: F811
    def two_alive_holding_partitions():
        ws = http.get("/api/v1/workers").json()["workers"]
        return ws if len(ws) == 2 and all(w["status"] == "alive" and w["partitions"] for w in ws) else None

    workers = wait_until(two_alive_holding_partitions, timeout=60, interval=0.3, message="two executors in the API")
    long = submit(http, handler="sleep", payload={"seconds": 60}, name="a long one")

    page.goto("/ui")
    page.click("nav a[href='/ui/workers']")
    page.wait_for_url("**/ui/workers")
    wait_until(lambda: rows(page) == {w["id"]: "alive" for w in workers}, timeout=15, message="both rows alive")
    for w in workers:
        row = page.locator(f"#workers tr[data-id='{w['id']}']")
        assert row.locator("td").nth(2).text_content() == w["host"]
        assert row.locator("td").nth(3).text_content() == str(w["pid"])
        chips = row.locator("td.partitions .chip").all_text_contents()
        assert sum(len(c.split("[")[1].rstrip("]").split(",")) for c in chips) == len(w["partitions"])
        assert {"noop", "sleep", "echo"} <= set(row.locator("td.handlers .chip").all_text_contents())
    running = page.locator(f"#workers a[href='/ui/tasks/{long}']")
    running.wait_for(timeout=20000)  # the long task among the tasks in flight, linked to its page
    busy = running.locator("xpath=ancestor::tr").get_attribute("data-id")

    victim = next(w for w in workers if w["id"] == busy)
    os.kill(victim["pid"], signal.SIGKILL)
    wait_until(lambda: rows(page).get(victim["id"]) == "gone", timeout=15, interval=0.2,
               message="the killed executor shown as gone")
    # dev starts a new executor in its place: two alive, the killed one gone
    wait_until(lambda: sorted(rows(page).values()) == ["alive", "alive", "gone"], timeout=60, interval=0.3,
               message="a new executor alive beside the gone one")
    alive = "#workers tr[data-status=alive]"
    wait_until(lambda: page.locator(f"{alive} a[href='/ui/tasks/{long}']").count() == 1
               and page.locator(f"{alive} td.partitions:not(:has(.chip))").count() == 0, timeout=60, interval=0.3,
               message="the long task running again on an alive executor, every alive one holding partitions")
    page.select_option("#wk-status", "gone")
    wait_until(lambda: rows(page) == {victim["id"]: "gone"}, timeout=10, message="only the gone one")
    page.select_option("#wk-status", "")
    wait_until(lambda: len(rows(page)) == 3, timeout=10, message="all three again")
    assert "2 alive, 1 gone" in page.text_content("#wk-count")
    shot(page, "workers")
    assert page.errors == []
