"""Topic triggers through the HTTP API, against the real broker (no processor): what the API writes is read back
from ``<p>.events``; reads answer from the API's own view of what it wrote (read-your-writes)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from taskstream.api import create_app
from taskstream.schemas import Settings, Topics, TriggerCreated, TriggerDeleted, TriggerPaused, TriggerResumed, codec
from tests.integration.test_api import read_topic, topic_is_empty

pytestmark = pytest.mark.integration

V1 = "/api/v1"
BODY = {"name": "orders", "topic": "shop.orders", "task": {"handler": "orders.handle", "priority": "high"}}


@pytest.fixture
def client(settings: Settings):
    with TestClient(create_app(settings)) as c:
        yield c


def test_create_list_get_pause_resume_delete(client, settings):
    r = client.post(f"{V1}/triggers", json={**BODY, "filter": {"type": "order"}, "start": "earliest",
                                             "bootstrap_servers": "other:9092", "security_protocol": "SASL_SSL",
                                             "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "u",
                                             "sasl_password": "s3cret"})
    assert r.status_code == 201, r.text
    doc = r.json()
    assert r.headers["location"] == f"{V1}/triggers/orders"
    assert (doc["name"], doc["topic"], doc["status"], doc["filter"], doc["start"]) == (
        "orders", "shop.orders", "active", {"type": "order"}, "earliest")
    assert doc["task"]["handler"] == "orders.handle" and doc["task"]["priority"] == "high"
    # The secret is in the log (the truth), never in an answer.
    assert doc["sasl_password"] == "***"
    for answer in (client.get(f"{V1}/triggers"), client.get(f"{V1}/triggers/orders")):
        assert answer.status_code == 200 and "s3cret" not in answer.text
    assert [t["name"] for t in client.get(f"{V1}/triggers").json()["triggers"]] == ["orders"]
    assert client.get(f"{V1}/triggers/orders").json()["sasl_password"] == "***"

    assert client.post(f"{V1}/triggers/orders:pause").json()["status"] == "paused"
    assert client.post(f"{V1}/triggers/orders:pause").status_code == 202  # a harmless repeat
    assert client.post(f"{V1}/triggers/orders:resume").json()["status"] == "active"
    r = client.delete(f"{V1}/triggers/orders")
    assert r.status_code == 202 and r.json()["status"] == "deleted"
    assert client.post(f"{V1}/triggers/orders:resume").status_code == 409
    assert client.delete(f"{V1}/triggers/orders").status_code == 409
    assert client.post(f"{V1}/triggers", json=BODY).status_code == 409  # a name is never taken again
    assert client.get(f"{V1}/triggers?status=deleted").json()["triggers"][0]["name"] == "orders"
    assert client.get(f"{V1}/triggers?status=active").json()["triggers"] == []

    events = sorted((codec.decode(m.value()) for m in read_topic(settings, Topics(settings.prefix).events, 4)),
                    key=lambda e: e.occurred_at)
    kinds = [type(e) for e in events]
    assert kinds == [TriggerCreated, TriggerPaused, TriggerResumed, TriggerDeleted]
    assert events[0].sasl_password == "s3cret" and events[0].trigger_id == "trigger:orders"


@pytest.mark.parametrize(("changes", "field"), [
    ({"topic": "not a topic"}, "topic"),
    ({"filter": [1, 2]}, "filter"),
    ({"filter": {"a": {"nested": "object"}}}, "filter"),
    ({"start": "yesterday"}, "start"),
    ({"start": {"offset": {"zero": 1}}}, "start"),
    ({"start": {"time": "noon"}}, "start"),
    ({"format": "avro"}, "format"),
    ({"key_as": "header"}, "key_as"),
    ({"name": "has spaces"}, "name"),
    ({"security_protocol": "SASL_SSL"}, "bootstrap_servers"),
    ({"task": {"handler": "h", "payload": {"a": 1}}}, "task.payload"),
])
def test_bad_input_is_422_naming_the_field_and_writes_nothing(client, settings, changes, field):
    r = client.post(f"{V1}/triggers", json={**BODY, **changes})
    assert r.status_code == 422, r.text
    assert field in [e["field"] for e in r.json()["errors"]], r.json()
    assert topic_is_empty(settings, Topics(settings.prefix).events)


def test_unknown_trigger_is_404(client):
    assert client.get(f"{V1}/triggers/nope").status_code == 404
    assert client.post(f"{V1}/triggers/nope:pause").status_code == 404
    assert client.delete(f"{V1}/triggers/nope").status_code == 404


def test_the_python_client_creates_reads_pauses_resumes_deletes(client):
    from taskstream.client import Client, Conflict, Trigger

    with Client("http://testserver", transport=client._transport) as tc:
        t = tc.create_trigger("clicks", "web.clicks", {"handler": "clicks.count"}, filter={"kind": "buy"},
                              start={"offset": {"0": 5}}, bootstrap_servers="other:9092", sasl_username="u",
                              sasl_password="pw", security_protocol="SASL_SSL", sasl_mechanism="PLAIN")
        assert isinstance(t, Trigger) and t.status == "active" and t.sasl_password == "***"
        assert t.start == {"offset": {"0": 5}} and t.filter == {"kind": "buy"}
        assert [x.name for x in tc.triggers()] == ["clicks"] and tc.get_trigger("clicks").topic == "web.clicks"
        assert tc.pause_trigger("clicks").status == "paused"
        assert tc.triggers(status="paused")[0].name == "clicks"
        assert tc.resume_trigger("clicks").status == "active"
        assert tc.delete_trigger("clicks").status == "deleted"
        with pytest.raises(Conflict):
            tc.pause_trigger("clicks")
