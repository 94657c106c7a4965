"""Rate limits of a concurrency key and the live view, end to end on the real broker (issue 28 items 2 and 5).

A whole stack (processor, executor with room for 8, API over HTTP) with a
topic prefix of its own. 60 tasks of one key with a rate of 5 per second go
in through ``POST /tasks:batch``; their handler records when each starts.
The bound is checked twice: exactly on the gate's admissions, folded from
the key's events in the log (never more than 5 in any second of the gate's
clock), and on the handlers' recorded starts within a second's tolerance
(the hops from grant to start vary), over the 10 s the tasks need; ``state
rebuild --verify`` then finds the live gate equal to a fold of the log. A key
with limit 1 and three held tasks shows its holder and its two waiters in
``GET /api/v1/limits``, ``taskstream limits`` and the client. A waiter of
such a key PATCHed to ``high`` moves to the front of the line and is
admitted before the medium ones that waited longer.
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

RECORD = '''
import time
from taskstream.executors import handler

@handler("rate.record")
def record(payload, ctx):
    with open(payload["log"], "a") as f:
        f.write(f"{ctx.task_id} {time.time()}\\n")
    return None
'''

TASKS = 60
RATE = 5


@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory):
    s = LiveStack(broker, tmp_path_factory.mktemp("rates"), modules={"ratehandlers": RECORD}).wait_ready()
    yield s
    s.stop()


def _most_in(times: list[float], window: float) -> int:
    """The most of ``times`` in any half-open window ``[t, t + window)``."""
    times = sorted(times)
    return max((sum(1 for u in times[i:] if u < t + window) for i, t in enumerate(times)), default=0)


def test_a_rate_of_five_per_second_holds_over_ten_seconds(stack):
    log = stack.folder / "starts.log"
    key = "api-quota"
    body = {"tasks": [{"handler": "rate.record", "payload": {"log": str(log), "n": i},
                       "concurrency": {"key": key, "rate": RATE, "per_s": 1}} for i in range(TASKS)]}
    r = httpx.post(f"{stack.url}/api/v1/tasks:batch", json=body, timeout=30)
    assert r.status_code == 202, r.text
    ids = [t["id"] for t in r.json()["tasks"]]
    assert all(t["concurrency"] == {"key": key, "limit": None, "rate": RATE, "per_s": 1.0} for t in r.json()["tasks"])

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

    # Exactly, in the gate's clock: fold the key's events as the processor did, count its admissions.
    events = TopicReader(stack.settings, Topics(stack.settings.prefix).events)
    try:
        gate_id = domain.gate_id(key)
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
    # the live tables (the key's gate with its spent starts included) equal a fold of the log
    wait_until(lambda: rebuild(stack.settings, verify=True).mismatches == [], timeout=30, interval=1.0,
               message="state rebuild --verify without a mismatch")


def test_the_live_view_shows_a_key_s_holders_and_waiters(stack):
    key = "hold-one"
    ids = submit_held(stack, key, 3)
    held = stack.folder / "held"

    def entry() -> dict | None:
        stack.check()
        found = httpx.get(f"{stack.url}/api/v1/limits", params={"key": key}, timeout=10).json()["limits"]
        return found[0] if found and found[0]["holding"] == 1 and found[0]["waiting"] == 2 else None

    e = wait_until(entry, timeout=30, interval=0.2, message="the key with one holder and two waiters")
    (holder,) = [h["task_id"] for h in e["holders"]]
    assert holder in ids and sorted([holder, *e["waiting_tasks"]]) == sorted(ids)
    assert (e["limit"], e["rate"], e["blocked_by"], e["key"]) == (1, None, "limit", key)
    waiting = httpx.get(f"{stack.url}/api/v1/tasks/{e['waiting_tasks'][0]}", timeout=10).json()
    assert (waiting["status"], waiting["waiting_for"]) == ("pending", f"concurrency:{key}")

    listed = httpx.get(f"{stack.url}/api/v1/limits", params={"active": "true"}, timeout=10).json()
    assert key in [x["key"] for x in listed["limits"]] and listed["totals"]["waiting"] >= 2
    with Client(stack.url) as client:
        assert client.limits(key=key)["limits"][0]["waiting"] == 2
    out = subprocess.run([sys.executable, "-m", "taskstream.cli.main", "limits", "--key", key, "--json"],
                         env=stack.env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.splitlines()
    assert json.loads(line)["holding"] == 1
    table = subprocess.run([sys.executable, "-m", "taskstream.cli.main", "limits", "--active"],
                           env=stack.env(), capture_output=True, text=True, timeout=60)
    assert key in table.stdout and "limit" in table.stdout, table.stdout
    metrics = httpx.get(f"{stack.url}/metrics", timeout=10).text
    assert "taskstream_limit_waiting" in metrics and key not in metrics

    # released one by one, each waiter gets the slot in turn
    (stack.folder / "release").mkdir(exist_ok=True)
    for task_id in [holder, *e["waiting_tasks"]]:
        wait_until(lambda t=task_id: (held / t).exists(), timeout=30, interval=0.1, message=f"{task_id} started")
        (stack.folder / "release" / task_id).write_text("")
    wait_until(lambda: entry_idle(stack, key), timeout=30, interval=0.2, message="the key idle again")


def submit_held(stack: LiveStack, key: str, n: int) -> list[str]:
    """``n`` tasks of the ``hold`` handler under concurrency ``key`` with limit 1, in one batch; their ids."""
    body = {"tasks": [{"handler": "hold", "payload": {"n": i}, "concurrency": {"key": key, "limit": 1}}
                      for i in range(n)]}
    r = httpx.post(f"{stack.url}/api/v1/tasks:batch", json=body, timeout=30)
    assert r.status_code == 202, r.text
    return [t["id"] for t in r.json()["tasks"]]


def entry_idle(stack: LiveStack, key: str, granted: int = 3) -> bool:
    (e,) = httpx.get(f"{stack.url}/api/v1/limits", params={"key": key}, timeout=10).json()["limits"]
    return e["holding"] == 0 and e["waiting"] == 0 and e["granted"] == granted


def test_a_waiter_patched_to_high_is_admitted_before_earlier_medium_waiters(stack):
    key = "patch-line"
    submit_held(stack, key, 4)

    def line(waiting_first: str | None = None) -> dict | None:
        stack.check()
        found = httpx.get(f"{stack.url}/api/v1/limits", params={"key": key}, timeout=10).json()["limits"]
        e = found[0] if found and found[0]["holding"] == 1 and found[0]["waiting"] == 3 else None
        return e if e and waiting_first in (None, e["waiting_tasks"][0]) else None

    e = wait_until(line, timeout=30, interval=0.2, message="the key with one holder and three waiters")
    (holder,), (*medium, last) = [h["task_id"] for h in e["holders"]], e["waiting_tasks"]
    r = httpx.patch(f"{stack.url}/api/v1/tasks/{last}", json={"priority": "high"}, timeout=10)
    assert r.status_code == 202, r.text
    e = wait_until(lambda: line(waiting_first=last), timeout=30, interval=0.2, message="the patched task first")
    assert e["waiting_tasks"] == [last, *medium]

    held, release = stack.folder / "held", stack.folder / "release"
    release.mkdir(exist_ok=True)
    (release / holder).write_text("")
    wait_until(lambda: (held / last).exists(), timeout=30, interval=0.1, message="the patched task started")
    assert not any((held / t).exists() for t in medium)  # limit 1: the medium ones wait for it
    for task_id in [last, *medium]:
        (release / task_id).write_text("")
    wait_until(lambda: entry_idle(stack, key, granted=4), timeout=30, interval=0.2, message="the key idle again")


@pytest.mark.parametrize(("concurrency", "field"), [
    ({"key": "k", "rate": 5}, "concurrency.per_s"),
    ({"key": "k", "per_s": 1}, "concurrency.rate"),
    ({"key": "k"}, "concurrency.limit"),
    ({"key": "k", "rate": 0, "per_s": 1}, "concurrency.rate"),
    ({"key": "k", "rate": 5, "per_s": 0}, "concurrency.per_s"),
])
def test_a_bad_rate_is_a_422_naming_the_field(stack, concurrency, field):
    r = httpx.post(f"{stack.url}/api/v1/tasks", json={"handler": "noop", "concurrency": concurrency}, timeout=10)
    assert r.status_code == 422, r.text
    assert field in r.text, r.text
