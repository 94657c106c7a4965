"""Fault test: SIGKILL one of two executors mid-load; nothing is lost, duplicates are counted.

Processor, API and two executors run as separate `taskstream` processes on
the module's broker with the test's own topic prefix. After an executor dies
its ready partitions move to the survivor once the group notices (about the
session timeout), and the attempts it had taken but not committed are
delivered again: at-least-once execution. The processor's fencing keeps the
task state right; the test prints how many tasks ran twice (run with -s).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from pathlib import Path

import httpx
import pytest

from taskstream.cli.broker import free_port
from taskstream.schemas import Settings, TaskFailed, TaskStarted, TaskSucceeded, Topics
from tests.conftest import wait_until
from tests.kafka_helpers import Component, TopicReader, stop_all

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_TASKS = 500
KILL_AFTER = 50
PRIORITIES = ("high", "medium", "low")


def tail(path: Path, n: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


def test_sigkill_one_of_two_executors_mid_load(settings: Settings, tmp_path: Path) -> None:
    settings = settings.model_copy(update={"api_port": free_port(), "log_level": "WARNING"})
    logs = {name: tmp_path / f"{name}.log" for name in ("processor", "api", "executor-a", "executor-b")}
    components = {
        "processor": Component(settings, "processor", log_path=logs["processor"]),
        "api": Component(settings, "api", log_path=logs["api"]),
        "executor-a": Component(settings, "executor", "--concurrency", "4", log_path=logs["executor-a"]),
        "executor-b": Component(settings, "executor", "--concurrency", "4", log_path=logs["executor-b"]),
    }
    events = TopicReader(settings, Topics(settings.prefix).events)

    def diagnostics() -> str:
        return "\n".join(f"--- {name} (exit {c.proc.poll()})\n{tail(logs[name])}" for name, c in components.items())

    def results_by_executor(task_ids) -> dict[str, int]:
        """executor id -> TaskSucceeded events it reported for ``task_ids``"""
        wanted = set(task_ids)
        counts: dict[str, int] = defaultdict(int)
        for e in events.values():
            if isinstance(e, TaskSucceeded) and e.task_id in wanted:
                counts[e.producer] += 1
        return counts

    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{settings.api_port}", timeout=10) as http:

            submitted: list[str] = []  # every id, appended as the API answers

            def submit(n: int, seconds: float) -> list[str]:
                ids = []
                with httpx.Client(base_url=http.base_url, timeout=10) as client:
                    for i in range(n):
                        r = client.post("/api/v1/tasks", json={"handler": "sleep", "payload": {"seconds": seconds},
                                                               "priority": PRIORITIES[i % 3]})
                        assert r.status_code == 202, r.text
                        ids.append(r.json()["id"])
                        submitted.append(ids[-1])
                return ids

            def api_ready() -> bool:
                try:
                    return http.get("/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(api_ready, timeout=60, interval=0.2, message="API ready")

            # Warm up until both executors report results, so both own ready partitions when the
            # load starts and the kill takes work away.
            warm: list[str] = []

            def both_executors_working() -> bool:
                warm.extend(submit(30, 0))
                events.until(lambda _: sum(results_by_executor(warm).values()) >= len(warm), timeout=60,
                             message=f"{len(warm)} warm-up results")
                return len(results_by_executor(warm)) == 2

            wait_until(both_executors_working, timeout=90, interval=0.5, message="both executors running tasks")
            ids_so_far = lambda: submitted[len(warm):]  # noqa: E731

            # Submit the load from a thread: executors run tasks while it is being submitted, and the
            # kill must land mid-load.
            ids: list[str] = []
            submitter = threading.Thread(target=lambda: ids.extend(submit(N_TASKS, 0.05)), daemon=True)
            submitter.start()
            events.until(lambda _: sum(results_by_executor(ids_so_far()).values()) >= KILL_AFTER, timeout=60,
                         message=f"{KILL_AFTER} results")
            before = dict(results_by_executor(ids_so_far()))
            components["executor-a"].kill()
            print(f"\nfailover: SIGKILLed executor-a after {sum(before.values())} of {N_TASKS} results {before}")
            submitter.join(60)
            assert len(ids) == N_TASKS
            wanted = set(ids)

            def all_succeeded():
                for name, c in components.items():
                    if name != "executor-a":
                        assert c.proc.poll() is None, f"{name} exited\n{diagnostics()}"
                found, cursor = {}, None
                while True:
                    params = {"status": "succeeded", "limit": 1000, **({"cursor": cursor} if cursor else {})}
                    page = http.get("/api/v1/tasks", params=params).json()
                    found.update((t["id"], t) for t in page["tasks"] if t["id"] in wanted)
                    cursor = page["next_cursor"]
                    if not cursor:
                        return found if len(found) == N_TASKS else None

            try:
                final = wait_until(all_succeeded, timeout=180, interval=0.5, message=f"all {N_TASKS} tasks succeeded")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{diagnostics()}") from None

            # The final state: every task succeeded once, with its result, on its first attempt.
            for task_id in ids:
                task = final[task_id]
                assert task["status"] == "succeeded" and task["result"] == {"slept": 0.05}, task
                assert task["attempt"] == 1, task
            for status in ("failed", "queued", "running", "pending", "scheduled"):
                left = http.get("/api/v1/tasks", params={"status": status, "limit": 1}).json()["tasks"]
                assert left == [], f"a task is still {status}: {left}"

        # Count executions from the log: a task ran twice if more than one result (or start)
        # was reported for the same attempt.
        events.until(lambda _: len({e.task_id for e in events.values() if isinstance(e, TaskSucceeded)} & wanted)
                     == N_TASKS, timeout=30, message="every result in the events topic")
        results: dict[tuple[str, int], list[str]] = defaultdict(list)
        starts: dict[tuple[str, int], int] = defaultdict(int)
        failures = []
        for e in events.values():
            if e is None or e.task_id not in wanted:
                continue
            if isinstance(e, TaskSucceeded):
                results[(e.task_id, e.attempt)].append(e.producer)
            elif isinstance(e, TaskStarted):
                starts[(e.task_id, e.attempt)] += 1
            elif isinstance(e, TaskFailed):
                failures.append(e)
        assert failures == []
        assert {task_id for task_id, _ in results} == wanted
        assert {attempt for _, attempt in results} == {1}
        twice = {task_id for (task_id, _), producers in results.items() if len(producers) > 1}
        twice |= {task_id for (task_id, _), n in starts.items() if n > 1}
        on_both = sum(1 for producers in results.values() if len(set(producers)) > 1)
        print(f"failover: {len(twice)} of {N_TASKS} ran twice ({on_both} of them on both executors)")
    finally:
        events.close()
        stop_all(*components.values())
