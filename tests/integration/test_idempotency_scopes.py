"""Idempotency keys are scoped to the principal (issue 25 item 7), on the real broker.

Two API keys sending the same ``Idempotency-Key`` get two different tasks:
no 422, nothing that says the other used the key. Each one's repeat still
answers its own task; a JWT subject is a scope of its own, and anonymous
callers share one (their ids are those of before scopes existed).
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from taskstream.api import create_app
from taskstream.api.idempotency import derived_id
from taskstream.cli.keys import create_key
from taskstream.schemas import Settings
from tests.integration.test_auth import key_ready, secured, token
from tests.integration.test_auth import signer as signer  # noqa: F401  (a fixture, shared)

pytestmark = pytest.mark.integration

LATER = "2999-01-01T00:00:00Z"  # the tasks wait: nothing runs them in this test


def test_two_principals_with_one_key_get_their_own_tasks(settings: Settings, signer) -> None:
    s = secured(settings, signer)
    key_a, record_a = create_key(s, "submitter", "alice", [])
    key_b, record_b = create_key(s, "submitter", "bob", [])
    app = create_app(s)
    same = {"Idempotency-Key": "nightly-report"}
    with TestClient(app) as c:
        key_ready(app, key_a)
        key_ready(app, key_b)
        a = c.post("/api/v1/tasks", headers={"X-API-Key": key_a, **same}, json={"handler": "h", "run_at": LATER})
        assert a.status_code == 202, a.text
        # B sends another body under the same key: its own task, not A's 422 "already used"
        b = c.post("/api/v1/tasks", headers={"X-API-Key": key_b, **same},
                   json={"handler": "other", "run_at": LATER})
        assert b.status_code == 202, b.text
        assert a.json()["id"] != b.json()["id"]
        assert a.json()["id"] == derived_id("nightly-report", record_a.key_id)
        assert b.json()["id"] == derived_id("nightly-report", record_b.key_id)
        # each principal's repeat is still answered with its own task, and its own conflict is still a 422
        again = c.post("/api/v1/tasks", headers={"X-API-Key": key_b, **same},
                       json={"handler": "other", "run_at": LATER})
        assert (again.status_code, again.json()["id"]) == (202, b.json()["id"])
        mine = c.post("/api/v1/tasks", headers={"X-API-Key": key_a, **same}, json={"handler": "x", "run_at": LATER})
        assert mine.status_code == 422 and mine.json()["errors"][0]["field"] == "Idempotency-Key"
        # batches and workflows too
        batch = {"tasks": [{"handler": "h", "run_at": LATER}]}
        ba = c.post("/api/v1/tasks:batch", headers={"X-API-Key": key_a, **same}, json=batch)
        bb = c.post("/api/v1/tasks:batch", headers={"X-API-Key": key_b, **same},
                    json={"tasks": [{"handler": "other", "run_at": LATER}]})
        assert (ba.status_code, bb.status_code) == (202, 202), (ba.text, bb.text)
        assert ba.json()["tasks"][0]["id"] != bb.json()["tasks"][0]["id"]
        flow = {"tasks": [{"key": "a", "handler": "h", "run_at": LATER}]}
        wa = c.post("/api/v1/workflows", headers={"X-API-Key": key_a, **same}, json=flow)
        wb = c.post("/api/v1/workflows", headers={"X-API-Key": key_b, **same},
                    json={"tasks": [{"key": "a", "handler": "other", "run_at": LATER}]})
        assert (wa.status_code, wb.status_code) == (202, 202), (wa.text, wb.text)
        assert wa.json()["workflow_id"] != wb.json()["workflow_id"]
        # a JWT subject has a scope of its own
        bearer = {"Authorization": f"Bearer {token(signer, 'submitter', sub='carol')}", **same}
        cj = c.post("/api/v1/tasks", headers=bearer, json={"handler": "third", "run_at": LATER})
        assert cj.status_code == 202, cj.text
        assert cj.json()["id"] == derived_id("nightly-report", "carol") not in (a.json()["id"], b.json()["id"])


def test_anonymous_callers_share_one_scope_with_the_ids_of_before(settings: Settings) -> None:
    with TestClient(create_app(settings)) as c:
        first = c.post("/api/v1/tasks", headers={"Idempotency-Key": "anon-k"}, json={"handler": "h", "run_at": LATER})
        assert (first.status_code, first.json()["id"]) == (202, derived_id("anon-k"))
        other = c.post("/api/v1/tasks", headers={"Idempotency-Key": "anon-k"},
                       json={"handler": "x", "run_at": LATER})
        assert other.status_code == 422  # one scope: another anonymous body under the same key conflicts
