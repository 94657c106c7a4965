"""A handler's rate end to end on the real broker (issue 28 item 2, "per handler"), through the CLI and the API.

A whole stack (processor, executor with room for 8, API over HTTP) with a
topic prefix of its own. ``taskstream handlers limit <h> --rate 5 --per 1``
sets the handler's rate; 60 tasks of the handler, with no concurrency key of
their own, go in through ``POST /tasks:batch`` and their handler records when
each starts. Tasks over the rate wait ``pending`` with ``waiting_for:
"concurrency:handler:<h>"``, never failing; the handlers' recorded starts keep
5 a second within a second's tolerance over the ~12 s they need, and the
handler gate's admissions, folded from the log, keep it exactly. ``GET
/api/v1/limits`` shows the handler's rate and its gate; ``state rebuild
--verify`` finds the live tables equal to a fold of the log.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import httpx
import pytest

from taskstream.client import Client
from taskstream.schemas import GateEvent, GateState, Topics
from taskstream.streams import domain
from taskstream.streams.rebuild import rebuild
from tests.conftest import wait_until
from tests.integration.live_stack import LiveStack
from tests.kafka_helpers import TopicReader

pytestmark = [pytest.mark.integration]

HANDLER = "hrate.record"
RECORD = f'''
import time
from taskstream.executors import handler

@handler("{HANDLER}")
def record(payload, ctx):
    with open(payload["log"], "a") as f:
        f.write(f"{{ctx.task_id}} {{time.time()}}\\n")
    return None
'''

TASKS = 60
RATE = 5


@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory):
    s = LiveStack(broker, tmp_path_factory.mktemp("hrates"), modules={"hratehandlers": RECORD}).wait_ready()
    try:
        yield s
    finally:
        s.stop()


def _most_in(times: list[float], window: float) -> int:
    """The most of ``times`` in any half-open window ``[t, t + window)``."""
    times = sorted(times)
    return max((sum(1 for u in times[i:] if u < t + window) for i, t in enumerate(times)), default=0)


def test_a_handler_rate_of_five_per_second_holds_over_ten_seconds(stack):
    out = subprocess.run([sys.executable, "-m", "taskstream.cli.main", "handlers", "limit", HANDLER,
                          "--rate", str(RATE), "--per", "1", "--json"],
                         env=stack.env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"kind": "handler", "name": HANDLER, "limit": None, "rate": RATE, "per_s": 1.0}
    listed = httpx.get(f"{stack.url}/api/v1/limits", timeout=10).json()
    assert {"kind": "handler", "name": HANDLER, "limit": None, "rate": RATE, "per_s": 1.0} in listed["handlers"]

    log = stack.folder / "starts.log"
    body = {"tasks": [{"handler": HANDLER, "payload": {"log": str(log), "n": i}} for i in range(TASKS)]}
    r = httpx.post(f"{stack.url}/api/v1/tasks:batch", json=body, timeout=30)
    assert r.status_code == 202, r.text
    ids = [t["id"] for t in r.json()["tasks"]]
    gate_id = domain.gate_id(f"handler:{HANDLER}")

    def a_waiting_task() -> dict | None:
        stack.check()
        page = httpx.get(f"{stack.url}/api/v1/tasks", params={"status": "pending", "limit": 1000}, timeout=10)
        return next((t for t in page.json()["tasks"] if t["id"] in ids and t.get("waiting_for") == gate_id), None)

    waiting = wait_until(a_waiting_task, timeout=30, interval=0.2, message="a task waiting for the handler's rate")
    assert waiting["status"] == "pending"

    def gate_entry() -> dict | None:
        found = httpx.get(f"{stack.url}/api/v1/limits", params={"key": f"handler:{HANDLER}"}, timeout=10).json()
        return found["limits"][0] if found["limits"] and found["limits"][0]["rate"] == RATE else None

    entry = wait_until(gate_entry, timeout=30, interval=0.2, message="the handler's gate in the live view")
    assert (entry["limit"], entry["per_s"]) == (None, 1.0)

    def succeeded() -> int:
        stack.check()
        page = httpx.get(f"{stack.url}/api/v1/tasks", params={"status": "succeeded", "limit": 1000}, timeout=10)
        return len(set(ids) & {t["id"] for t in page.json()["tasks"]})

    wait_until(lambda: succeeded() == TASKS, timeout=90, interval=0.5, message=f"{TASKS} rated tasks succeeded")
    starts = [float(line.split()[1]) for line in log.read_text().splitlines()]
    assert len(starts) == TASKS
    # The handlers' starts: 5 a second, within a second's tolerance for the hops between grant and start.
    assert _most_in(starts, 1.0) <= 2 * RATE, sorted(starts)
    assert _most_in(starts, 10.0) <= RATE * 11, sorted(starts)
    assert max(starts) - min(starts) >= TASKS / RATE - 2  # the rate held them back: 12 s of starts, not a burst

    # Exactly, in the gate's clock: fold the handler gate's events as the processor did, count its admissions.
    events = TopicReader(stack.settings, Topics(stack.settings.prefix).events)
    try:
        events.read_to_end()  # every task succeeded: every event that admitted one is in the log
        g, admitted = None, []
        for e in [e for e in events.values() if isinstance(e, GateEvent) and e.gate_id == gate_id]:
            before, g = g, domain.evolve(g, e)
            if isinstance(g, GateState) and g is not before:
                admitted += [g.updated_at] * len(g.admitted)
        assert len(admitted) == TASKS
        window = timedelta(seconds=1)
        assert max(sum(1 for u in admitted[i:] if u < t + window) for i, t in enumerate(admitted)) == RATE
    finally:
        events.close()
    wait_until(lambda: rebuild(stack.settings, verify=True).mismatches == [], timeout=30, interval=1.0,
               message="state rebuild --verify without a mismatch")

    with Client(stack.url) as client:
        assert client.set_handler_limit(HANDLER, None)["rate"] is None
        wait_until(lambda: all(x["name"] != HANDLER for x in client.handler_limits()), timeout=10, interval=0.2,
                   message="the handler's rate ended")


def test_a_rate_without_its_period_is_refused(stack):
    r = httpx.put(f"{stack.url}/api/v1/limits/handlers/{HANDLER}", json={"rate": 5}, timeout=10)
    assert r.status_code == 422, r.text
    r = httpx.put(f"{stack.url}/api/v1/limits/handlers/{HANDLER}", json={}, timeout=10)
    assert r.status_code == 422, r.text
    r = httpx.put(f"{stack.url}/api/v1/limits/handlers/{HANDLER}", json={"limit": 2, "rate": 0, "per_s": 1},
                  timeout=10)
    assert r.status_code == 422, r.text
