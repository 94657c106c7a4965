"""``GET /api/v1/workflows/{id}`` and ``GET /api/v1/workflows``: real Kafka, the API's real lifespan.

Read-your-writes and paging need no processor; one test runs a processor and an executor and follows two
workflows to their overall statuses (one succeeds, one fails part-way).
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from taskstream.api import create_app
from taskstream.schemas import Settings
from tests.conftest import wait_until
from tests.kafka_helpers import Component, stop_all

pytestmark = pytest.mark.integration

V1 = "/api/v1"
DIAMOND = {"tasks": [
    {"key": "d", "handler": "noop", "depends_on": ["b", "c"]},
    {"key": "c", "handler": "noop", "depends_on": ["a"]},
    {"key": "b", "handler": "noop", "depends_on": ["a"]},
    {"key": "a", "handler": "noop"},
]}


@pytest.fixture
def client(settings: Settings):
    with TestClient(create_app(settings)) as c:
        yield c


def test_a_workflow_reads_back_right_after_submit(client: TestClient) -> None:
    posted = client.post(f"{V1}/workflows", json=DIAMOND).json()
    ids = posted["tasks"]
    r = client.get(f"{V1}/workflows/{posted['workflow_id']}")
    assert r.status_code == 200, r.text
    wf = r.json()
    assert wf["id"] == posted["workflow_id"] and wf["status"] == "running" and wf["task_count"] == 4
    assert sum(wf["counts"].values()) == 4 and wf["finished_at"] is None and wf["created_at"]
    assert [t["key"] for t in wf["tasks"]] == ["a", "b", "c", "d"]  # topological generations, by key within
    assert {t["id"] for t in wf["tasks"]} == set(ids.values())
    assert sorted((e["from"], e["to"]) for e in wf["edges"]) == sorted([
        (ids["a"], ids["b"]), (ids["a"], ids["c"]), (ids["b"], ids["d"]), (ids["c"], ids["d"])])
    d = wf["tasks"][3]
    assert d["handler"] == "noop" and d["status"] == "pending" and sorted(d["depends_on"]) == sorted(
        [ids["b"], ids["c"]]) and "payload" not in d
    assert wf["truncated"] is False

    r = client.get(f"{V1}/workflows/no-such-workflow")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"


def test_list_newest_first_with_cursor_and_status(client: TestClient) -> None:
    wids = [client.post(f"{V1}/workflows", json=DIAMOND).json()["workflow_id"] for _ in range(5)]
    client.post(f"{V1}/tasks", json={"handler": "noop"})  # not a workflow: never listed
    seen, cursor = [], None
    while True:
        page = client.get(f"{V1}/workflows", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        assert len(page["workflows"]) <= 2 and "tasks" not in (page["workflows"] or [{}])[0]
        seen += [w["id"] for w in page["workflows"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(wids))
    running = client.get(f"{V1}/workflows", params={"status": "running"}).json()["workflows"]
    assert [w["id"] for w in running] == list(reversed(wids))
    assert client.get(f"{V1}/workflows", params={"status": "succeeded"}).json()["workflows"] == []
    for params, field in [({"status": "done"}, "status"), ({"cursor": "nope"}, "cursor"), ({"limit": 0}, "limit")]:
        r = client.get(f"{V1}/workflows", params=params)
        assert r.status_code == 422 and field in r.text, r.text


def test_overall_status_follows_the_tasks(client: TestClient, settings: Settings, tmp_path) -> None:
    procs = [Component(settings, "processor", log_path=tmp_path / "processor.log"),
             Component(settings, "executor", log_path=tmp_path / "executor.log")]
    try:
        good = client.post(f"{V1}/workflows", json=DIAMOND).json()
        bad = client.post(f"{V1}/workflows", json={"tasks": [
            {"key": "a", "handler": "noop"},
            {"key": "boom", "handler": "sleep", "payload": {}, "depends_on": ["a"]},  # fails for good
            {"key": "after", "handler": "noop", "depends_on": ["boom"]},
            {"key": "aside", "handler": "noop", "depends_on": ["a"]},
        ]}).json()

        def workflow(wid: str) -> dict:
            return client.get(f"{V1}/workflows/{wid}").json()

        done = wait_until(lambda: (w := workflow(good["workflow_id"]))["status"] != "running" and w, timeout=60,
                          message="diamond done")
        assert done["status"] == "succeeded" and done["counts"] == {"succeeded": 4}
        assert done["started_at"] <= done["finished_at"]
        assert all(t["started_at"] and t["finished_at"] for t in done["tasks"])
        assert done["finished_at"] == max(t["finished_at"] for t in done["tasks"])

        failed = wait_until(lambda: (w := workflow(bad["workflow_id"]))["status"] != "running" and w, timeout=60,
                            message="failing workflow done")
        by_key = {t["key"]: t for t in failed["tasks"]}
        assert failed["status"] == "failed" and failed["finished_at"]
        assert (by_key["boom"]["status"], by_key["after"]["status"], by_key["aside"]["status"]) == (
            "failed", "upstream_failed", "succeeded")
        assert "seconds" in by_key["boom"]["error"] and by_key["boom"]["error_type"]
        assert by_key["aside"]["error_type"] is None
        assert failed["counts"] == {"failed": 1, "succeeded": 2, "upstream_failed": 1}

        listed = {s: [w["id"] for w in client.get(f"{V1}/workflows", params={"status": s}).json()["workflows"]]
                  for s in ("running", "succeeded", "failed")}
        assert listed == {"running": [], "succeeded": [good["workflow_id"]], "failed": [bad["workflow_id"]]}
    finally:
        stop_all(*procs)
