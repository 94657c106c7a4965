"""Fan-out without a shared cap (issue 25 item 7): a map step feeding 10,000 tasks and a reduce, on the real broker.

A real processor and executor (subprocesses) and the API in-process. A map
task waits behind a gate (a task due in the far future) while 10,000 tasks
register as its dependents, submitted in batches of 1,000; ten reducers wait
on 1,000 of them each (a task's own ``depends_on`` is bounded at 1,000) and
a final reduce on the ten. The map task's state record stays small: its
dependents are edge records of their own. The processor is then killed and
replaced (its table, edges included, comes back from ``<p>.state``), the gate
is opened, and everything must succeed; ``state rebuild --verify`` agrees
with the live states and edges.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from taskstream.api import create_app
from taskstream.schemas import Settings
from taskstream.streams.rebuild import rebuild
from tests.conftest import wait_until
from tests.kafka_helpers import Component, stop_all

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]  # 2-5 min on 2 shared cores

V1 = "/api/v1"
MAPPED = 10_000
PER_REDUCER = 1_000  # MAX_DEPENDENCIES of one task
LATER = "2999-01-01T00:00:00Z"


def _batch(client: TestClient, tasks: list[dict]) -> list[str]:
    r = client.post(f"{V1}/tasks:batch", json={"tasks": tasks})
    assert r.status_code == 202, r.text
    return [t["id"] for t in r.json()["tasks"]]


def test_a_map_of_ten_thousand_tasks_and_a_reduce_run_end_to_end(settings: Settings, tmp_path: Path) -> None:
    processor = Component(settings, "processor", log_path=tmp_path / "processor.log")
    executor = Component(settings, "executor", "--concurrency", "16", log_path=tmp_path / "executor.log")
    replacement = None
    app = create_app(settings)
    try:
        with TestClient(app) as client:
            store = app.state.context.read_model.store
            (gate,) = _batch(client, [{"handler": "noop", "run_at": LATER}])
            (mapper,) = _batch(client, [{"handler": "noop", "depends_on": [gate]}])
            started = time.monotonic()
            items: list[str] = []
            for _ in range(MAPPED // 1_000):
                items += _batch(client, [{"handler": "noop", "depends_on": [mapper]} for _ in range(1_000)])
            reducers = _batch(client, [{"handler": "noop", "depends_on": items[i:i + PER_REDUCER]}
                                       for i in range(0, MAPPED, PER_REDUCER)])
            (final,) = _batch(client, [{"handler": "echo", "payload": {"done": True}, "depends_on": reducers}])
            wait_until(lambda: len(store.dependents(mapper)) == MAPPED, timeout=300, interval=0.5,
                       message=f"{MAPPED:,} dependents of the map task recorded")
            registered_s = time.monotonic() - started
            shown = client.get(f"{V1}/tasks/{mapper}").json()
            assert shown["status"] == "pending" and len(shown["dependents"]) == 1_000  # a read shows the first 1,000
            assert shown["dependents"] == sorted(items)[:1_000]
            # the state record stays small: the dependents are not in it
            raw = store._db.get(b"s:" + mapper.encode())
            assert raw is not None and len(raw) < 4_096, len(raw)

            # the processor's table, edges included, comes back from <p>.state in another process
            processor.kill()
            replacement = Component(settings, "processor", log_path=tmp_path / "processor-2.log")
            now = datetime.now(UTC).isoformat()
            r = client.patch(f"{V1}/tasks/{gate}", json={"run_at": now})
            assert r.status_code == 202, r.text
            opened = time.monotonic()
            done = wait_until(lambda: (t := client.get(f"{V1}/tasks/{final}").json())["status"] in
                              ("succeeded", "failed", "upstream_failed", "cancelled") and t,
                              timeout=600, interval=1.0, message="the final reduce to end")
            assert done["status"] == "succeeded", done
            ran_s = time.monotonic() - opened
            # every one of them (the read model follows each partition at its own pace)
            wait_until(lambda: all((s := store.get(t)) is not None and s.status == "succeeded"
                                   for t in [gate, mapper, *reducers, *items]),
                       timeout=120, interval=1.0, message="every task succeeded in the read model")
        print(f"\n{MAPPED:,} dependents registered in {registered_s:.1f}s; map, items and reduce ran in "
              f"{ran_s:.1f}s")
        stop_all(executor, replacement)
        report = rebuild(settings, verify=True)
        assert report.mismatches == [], report.mismatches[:5]
        assert report.tasks >= MAPPED + len(reducers) + 3
    finally:
        stop_all(*(c for c in (processor, executor, replacement) if c is not None))
