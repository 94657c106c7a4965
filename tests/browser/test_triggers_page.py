"""The Triggers page at /ui/triggers in headless Chromium against a live `taskstream dev` (the dashboard's stack).

A trigger created through the API (with a SASL password for another cluster) is listed, reached from the
navigation, with its topic, status and handler, and no trace of the password; its Pause button pauses it (the API
then says ``paused``) and its Resume button resumes it. The screenshot goes to ``docs/screenshots/triggers.png``
when ``TASKSTREAM_SCREENSHOTS=docs/screenshots``.
"""

from __future__ import annotations

import pytest

from tests.browser.test_dashboard import browser, http, page, shot, stack  # noqa: F401, F811  (fixtures)
from tests.conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.browser]

NAME = "ui-orders"


def row(pg) -> dict | None:
    return pg.evaluate("""name => {
        const r = document.querySelector(`#triggers tr[data-name='${name}']`);
        return r && { status: r.dataset.status, text: r.textContent,
                      buttons: [...r.querySelectorAll('button')].map(b => b.textContent) }; }""", NAME)


def test_triggers_page_lists_pauses_and_resumes_a_trigger(page, http) -> None:  # noqa: F811
    r = http.post("/api/v1/triggers", json={
        "name": NAME, "topic": "shop.orders", "task": {"handler": "noop"}, "filter": {"type": "order"},
        "bootstrap_servers": "elsewhere:9092", "security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
        "sasl_username": "u", "sasl_password": "ui-secret"})
    assert r.status_code == 201, r.text
    page.goto("/ui")
    page.click("nav a[href='/ui/triggers']")
    page.wait_for_url("**/ui/triggers")
    shown = wait_until(lambda: (x := row(page)) and x["status"] == "active" and x, timeout=30, interval=0.2,
                       message="the trigger listed as active")
    assert "shop.orders" in shown["text"] and "noop" in shown["text"] and "elsewhere:9092" in shown["text"]
    assert shown["buttons"] == ["Pause"] and "ui-secret" not in page.content()
    shot(page, "triggers")
    page.click(f"#triggers tr[data-name='{NAME}'] button.pause")
    wait_until(lambda: (x := row(page)) and x["status"] == "paused", timeout=30, interval=0.2, message="paused")
    assert http.get(f"/api/v1/triggers/{NAME}").json()["status"] == "paused"
    page.click(f"#triggers tr[data-name='{NAME}'] button.resume")
    wait_until(lambda: (x := row(page)) and x["status"] == "active", timeout=30, interval=0.2, message="resumed")
    assert http.get(f"/api/v1/triggers/{NAME}").json()["status"] == "active"
    assert not page.errors
