"""No request gets a 500: bodies, headers, paths and queries over a limit or not JSON are 4xx problems naming the field.

Real Kafka and the API's real lifespan. One app serves the whole
module (its probes write nothing, which each test checks); a task written by
the fixture is the target of the PATCH and retry probes.
"""

from __future__ import annotations

import json
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition
from fastapi.testclient import TestClient
from hypothesis import event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from taskstream.api import create_app
from taskstream.api.auth import endpoints
from taskstream.api.idempotency import derived_id
from taskstream.schemas import Settings, Topics, catalogue
from taskstream.schemas.kafka import common_config, ensure_topics, wait_for_broker
from taskstream.schemas.limits import (
    MAX_HANDLER_CHARS,
    MAX_ID_CHARS,
    MAX_JSON_DEPTH,
    MAX_LABEL_KEY_CHARS,
    MAX_LABEL_VALUE_CHARS,
    MAX_LABELS,
    MAX_NAME_CHARS,
    MAX_PAYLOAD_BYTES,
    MAX_TIMEOUT_S,
)
from tests.integration.test_api import PROBLEM

pytestmark = pytest.mark.integration

V1 = "/api/v1"
JSON = {"content-type": "application/json"}
BIG = "z" * MAX_PAYLOAD_BYTES  # with its quotes, 2 bytes over the payload limit


@pytest.fixture(scope="module")
def module_settings(broker, tmp_path_factory) -> Settings:
    s = Settings(bootstrap_servers=broker, prefix=f"t{uuid.uuid4().hex[:10]}", partitions=3,
                 data_dir=tmp_path_factory.mktemp("limits") / "data", metrics_port=0)
    wait_for_broker(s)
    assert ensure_topics(s, catalogue(s)) == []
    return s


@pytest.fixture(scope="module")
def api(module_settings: Settings):
    """The client and the id of the one task written before the probes (pending: no processor runs)."""
    with TestClient(create_app(module_settings)) as client:
        r = client.post(f"{V1}/tasks", json={"handler": "noop"})
        assert r.status_code == 202, r.text
        yield client, r.json()["id"]


def events_written(settings: Settings) -> int:
    """Records ever written to ``<p>.events``: the sum of its end offsets (a request the API answered has its
    records acknowledged already, and the topic deletes nothing)."""
    topic = Topics(settings.prefix).events
    consumer = Consumer({**common_config(settings, "test-reader"), "group.id": "test-reader"})
    try:
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5, cached=False)[1]
                   for p in range(settings.partitions))
    finally:
        consumer.close()


def raw(**fields: str) -> str:
    """A JSON object from already-encoded member values (so non-standard JSON reaches the server)."""
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in fields.items()) + "}"


def deep(n: int) -> str:
    return "[" * n + "]" * n


TASK = '"noop"'
PROBES = [
    # (method, path, body text, headers, status, field)
    ("POST", "/tasks", raw(handler=TASK, payload='{"n":18446744073709551616}'), {}, 422, "payload.n"),
    ("POST", "/tasks", raw(handler=TASK, payload='{"n":-9223372036854775809}'), {}, 422, "payload.n"),
    ("POST", "/tasks", raw(handler=TASK, payload=deep(300)), {}, 422, "payload" + "[0]" * MAX_JSON_DEPTH),
    ("POST", "/tasks", raw(handler=TASK, payload=deep(5000)), {}, 400, "body"),
    ("POST", "/tasks", raw(handler=TASK, payload="1" * 5000), {}, 400, "body"),
    ("POST", "/tasks", raw(handler=TASK, name='"\\ud800"'), {}, 422, "name"),
    ("POST", "/tasks", raw(handler=TASK, payload='{"k":"\\udfff"}'), {}, 422, "payload.k"),
    ("POST", "/tasks", raw(handler=TASK, payload='{"\\ud800":1}'), {}, 422, "payload"),
    ("POST", "/tasks", raw(handler=TASK, payload='{"x":NaN}'), {}, 422, "payload.x"),
    ("POST", "/tasks", raw(handler=TASK, payload='[1,{"x":-Infinity}]'), {}, 422, "payload[1].x"),
    ("POST", "/tasks", raw(handler=TASK, payload='{"x":1e400}'), {}, 422, "payload.x"),
    ("POST", "/tasks", raw(handler=TASK, payload=json.dumps(BIG)), {}, 413, "payload"),
    ("POST", "/tasks", raw(handler=TASK, run_at='"0001-01-01T00:00:00+01:00"'), {}, 422, "run_at"),
    ("POST", "/tasks", raw(handler=TASK, run_at='"1969-12-31T23:59:59Z"'), {}, 422, "run_at"),
    ("POST", "/tasks", raw(handler=TASK, run_at='"9999-12-31T23:59:59-01:00"'), {}, 422, "run_at"),
    ("POST", "/tasks", raw(handler=TASK, timeout_s="Infinity"), {}, 422, "timeout_s"),
    ("POST", "/tasks", raw(handler=TASK, timeout_s="NaN"), {}, 422, "timeout_s"),
    ("POST", "/tasks", raw(handler=TASK, timeout_s=str(MAX_TIMEOUT_S + 1)), {}, 422, "timeout_s"),
    ("POST", "/tasks", raw(handler=json.dumps("h" * (MAX_HANDLER_CHARS + 1))), {}, 422, "handler"),
    ("POST", "/tasks", raw(handler='"a\\u0000b"'), {}, 422, "handler"),
    ("POST", "/tasks", raw(handler=TASK, name=json.dumps("n" * (MAX_NAME_CHARS + 1))), {}, 422, "name"),
    ("POST", "/tasks", raw(handler=TASK, name='"line\\nbreak"'), {}, 422, "name"),
    ("POST", "/tasks", raw(handler=TASK, labels=json.dumps({f"k{i}": "v" for i in range(MAX_LABELS + 1)})), {}, 422,
     "labels"),
    ("POST", "/tasks", raw(handler=TASK, labels='{"team:a":"x"}'), {}, 422, "labels.team:a"),
    ("POST", "/tasks", raw(handler=TASK, labels='{"-a":"x"}'), {}, 422, "labels.-a"),
    ("POST", "/tasks", raw(handler=TASK, labels=json.dumps({"k" * (MAX_LABEL_KEY_CHARS + 1): "v"})), {}, 422,
     "labels." + "k" * (MAX_LABEL_KEY_CHARS + 1)),
    ("POST", "/tasks", raw(handler=TASK, labels=json.dumps({"k": "v" * (MAX_LABEL_VALUE_CHARS + 1)})), {}, 422,
     "labels.k"),
    ("POST", "/tasks", raw(handler=TASK, labels='{"k":"a\\tb"}'), {}, 422, "labels.k"),
    ("POST", "/tasks", raw(handler=TASK, depends_on=json.dumps(["i" * (MAX_ID_CHARS + 1)])), {}, 422,
     "depends_on[0]"),
    ("POST", "/tasks", raw(handler=TASK, **{"\ud800": "1"}), {}, 422, "body"),  # an unknown key that is not text
    ("POST", "/tasks", '{"handler":"noop","name":"\xff"}'.encode("latin-1"), {}, 400, "body"),
    ("POST", "/tasks", '{"handler":"noop"}'.encode("utf-16"), {"content-type": "application/json; charset=utf-16"},
     400, "body"),
    ("POST", "/tasks", '{"handler":"noop"}'.encode("utf-16-le"), {}, 400, "body"),  # no BOM: json guesses UTF-16
    ("POST", "/tasks", '{"handler":"noop"}'.encode("utf-32"), {}, 400, "body"),
    ("POST", "/tasks", '{"handler":"noop"}', {"content-type": "application/json; charset=iso-8859-1"}, 400, "body"),
    ("PATCH", "/tasks/{id}", '{"priority":"low"}'.encode("utf-16-be"), {}, 400, "body"),
    ("POST", "/tasks:batch",
     raw(tasks="[" + ",".join([raw(handler=TASK)] * 3 + [raw(handler=TASK, payload=json.dumps(BIG))]) + "]"),
     {}, 413, "tasks[3].payload"),
    ("POST", "/tasks:batch", raw(tasks="[" + raw(handler=TASK) + "," + raw(handler=TASK, payload='{"n":1e999}') + "]"),
     {}, 422, "tasks[1].payload.n"),
    ("POST", "/workflows", raw(tasks="[" + raw(handler=TASK, key=json.dumps("k" * (MAX_ID_CHARS + 1))) + "]"), {}, 422,
     "tasks[0].key"),
    ("POST", "/workflows", raw(tasks="[" + raw(handler=TASK, key='"a"', payload='{"x":[NaN]}') + "]"), {}, 422,
     "tasks[0].payload.x[0]"),
    ("PATCH", "/tasks/{id}", raw(payload=json.dumps(BIG)), {}, 413, "payload"),
    ("PATCH", "/tasks/{id}", raw(payload='{"n":99999999999999999999999}'), {}, 422, "payload.n"),
    ("PATCH", "/tasks/{id}", raw(timeout_s="Infinity"), {}, 422, "timeout_s"),
    ("PATCH", "/tasks/{id}", raw(run_at='"9999-12-31T23:59:59-01:00"'), {}, 422, "run_at"),
    ("PATCH", "/tasks/{id}", raw(priority='"low"'), {"If-Match": "9" * 5000}, 422, "If-Match"),
    ("POST", "/tasks/{id}/retry", raw(reason='"\\ud800"'), {}, 422, "reason"),
    ("POST", "/tasks/{id}/retry", raw(reason="Infinity"), {}, 422, "reason"),
    ("POST", "/schedules", raw(cron='"0 * * * *"', start_at='"9999-12-31T23:59:59-01:00"', task=raw(handler=TASK)), {},
     422, "start_at"),
    ("POST", "/schedules", raw(cron='"0 * * * *"', end_at='"0001-01-01T00:00:00+01:00"', task=raw(handler=TASK)), {},
     422, "end_at"),
    ("POST", "/schedules", raw(cron='"0 * * * *"', task=raw(handler=TASK, payload=json.dumps(BIG))), {}, 413,
     "task.payload"),
    ("POST", "/schedules", raw(cron='"0 * * * *"', task=raw(handler=TASK, timeout_s="Infinity")), {}, 422,
     "task.timeout_s"),
    ("POST", "/schedules", raw(cron='"*/99999999999999999999 * * * *"', task=raw(handler=TASK)), {}, 422, "cron"),
    ("POST", "/schedules", raw(cron='"0 * * * *"', name=json.dumps("n" * (MAX_NAME_CHARS + 1)), task=raw(handler=TASK)),
     {}, 422, "name"),
    # a task naming the id its own Idempotency-Key derives, and a batch whose derived ids name each other
    ("POST", "/tasks", raw(handler=TASK, depends_on=json.dumps([derived_id("self-k")])), {"Idempotency-Key": "self-k"},
     422, "depends_on[0]"),
    ("POST", "/tasks:batch", raw(tasks="[" + raw(handler=TASK, depends_on=json.dumps([derived_id("ring:1")])) + ","
                                 + raw(handler=TASK, depends_on=json.dumps([derived_id("ring:0")])) + "]"),
     {"Idempotency-Key": "ring"}, 422, "tasks[1].depends_on[0]"),
    ("POST", "/tasks", raw(handler=TASK), {"Idempotency-Key": "k" * 256}, 422, "Idempotency-Key"),
    ("POST", "/tasks", raw(handler=TASK), {"Idempotency-Key": " "}, 422, "Idempotency-Key"),
    ("GET", "/tasks/x?as_of=9999-12-31T23:59:59-01:00", None, {}, 422, "as_of"),
    ("GET", "/tasks/x?as_of=0001-01-01T00:00:00%2B01:00", None, {}, 422, "as_of"),
    ("GET", "/tasks/x?as_of=" + "9" * 20000, None, {}, 422, "as_of"),
    ("GET", "/tasks?cursor=" + "A" * 20000, None, {}, 422, "cursor"),
    ("GET", "/tasks?limit=" + "9" * 5000, None, {}, 422, "limit"),
    ("DELETE", "/tasks/{id}?reason=" + "r" * 1001, None, {}, 422, "reason"),
]


@pytest.mark.parametrize("method, path, body, headers, status, field", PROBES,
                         ids=[f"{i}-{p[0]} {p[1][:40]} {p[5][:30]}" for i, p in enumerate(PROBES)])
def test_probe_is_a_4xx_problem_naming_the_field_and_writes_nothing(
    api, module_settings: Settings, method: str, path: str, body: str | bytes | None, headers: dict, status: int,
    field: str,
) -> None:
    client, task_id = api
    before = events_written(module_settings)
    content = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    r = client.request(method, V1 + path.replace("{id}", task_id), content=content,
                       headers={**(JSON if body is not None else {}), **headers})
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"] == PROBLEM
    problem = r.json()
    assert problem["status"] == status and problem["type"].startswith("urn:taskstream:problem:")
    assert field in [e["field"] for e in problem["errors"]], problem
    assert field in problem["detail"]
    assert events_written(module_settings) == before


@pytest.mark.parametrize("path", [
    "/tasks/%ff%fe", "/tasks/%ed%a0%80", "/tasks/%00", "/tasks/" + "x" * 20000, "/tasks/a%2Fb/events",
    "/tasks/%ed%a0%80/retry", "/schedules/%ff", "/tasks/..%2F..%2Fhealthz",
])
def test_odd_ids_in_the_path_are_404_problems(api, module_settings: Settings, path: str) -> None:
    client, _ = api
    before = events_written(module_settings)
    for method in ("GET", "DELETE") if not path.endswith("/retry") else ("POST",):
        r = client.request(method, V1 + path)
        assert r.status_code == 404, r.text[:300]
        assert r.headers["content-type"] == PROBLEM and r.json()["status"] == 404
    assert events_written(module_settings) == before


def test_limits_are_inclusive(api, module_settings: Settings) -> None:
    """Exactly at every limit is accepted (and written); the probes above are one past it."""
    client, _ = api
    before = events_written(module_settings)
    at_limit = {
        "handler": "h" * MAX_HANDLER_CHARS,
        "name": "n" * MAX_NAME_CHARS,
        "labels": {("k" * (MAX_LABEL_KEY_CHARS - 3)) + f"{i:03}": "v" * MAX_LABEL_VALUE_CHARS
                   for i in range(MAX_LABELS)},
        "payload": "z" * (MAX_PAYLOAD_BYTES - 2),
        "timeout_s": MAX_TIMEOUT_S,
        "run_at": "9000-01-01T00:00:00Z",
        "depends_on": ["i" * MAX_ID_CHARS],
    }
    r = client.post(f"{V1}/tasks", json=at_limit)
    assert r.status_code == 202, r.text[:500]
    nested = {"handler": "h", "payload": json.loads(deep(MAX_JSON_DEPTH)), "labels": {"a.b/c-d_e": "x"}}
    assert client.post(f"{V1}/tasks", json=nested).status_code == 202
    extremes = {"handler": "h", "payload": [2**64 - 1, -(2**63), 1.7976931348623157e308, "\U0001f600"]}
    r = client.post(f"{V1}/tasks", json=extremes)
    assert r.status_code == 202 and r.json()["payload"] == extremes["payload"]
    assert events_written(module_settings) == before + 3


def test_utf8_bodies_are_taken_with_or_without_a_charset(api, module_settings: Settings) -> None:
    client, _ = api
    before = events_written(module_settings)
    body = '{"handler":"noop","name":"caf\u00e9 \U0001f600"}'.encode()
    for content_type in ("application/json; charset=utf-8", "application/json;charset=UTF-8", "application/json",
                         "application/problem+json; charset=utf8"):
        r = client.post(f"{V1}/tasks", content=body, headers={"content-type": content_type})
        assert r.status_code == 202 and r.json()["name"] == "caf\u00e9 \U0001f600", (content_type, r.text[:300])
    assert events_written(module_settings) == before + 4


def test_a_cycle_closed_through_a_task_written_before_is_refused(api, module_settings: Settings) -> None:
    """Task A (key ka) waits for the id key kb derives; no processor runs, so A stays pending in the read model:
    B (key kb) depending on A would close a cycle and is refused; the same B without that dependency is taken."""
    client, _ = api
    before = events_written(module_settings)
    a = client.post(f"{V1}/tasks", json={"handler": "noop", "depends_on": [derived_id("kb")]},
                    headers={"Idempotency-Key": "ka"})
    assert a.status_code == 202 and a.json()["status"] == "pending", a.text
    b = client.post(f"{V1}/tasks", json={"handler": "noop", "depends_on": [a.json()["id"]]},
                    headers={"Idempotency-Key": "kb"})
    assert b.status_code == 422 and b.headers["content-type"] == PROBLEM, b.text
    assert [e["field"] for e in b.json()["errors"]] == ["depends_on[0]"] and derived_id("kb") in b.json()["detail"]
    assert client.post(f"{V1}/tasks", json={"handler": "noop"}, headers={"Idempotency-Key": "kb"}).status_code == 202
    assert events_written(module_settings) == before + 2


#: GET routes that stream (SSE) until the client leaves: a GET through the test client never ends.
STREAMS = {"/api/v1/tasks/watch", "/api/v1/tasks/{task_id}/watch"}


def test_head_is_served_wherever_get_is(api) -> None:
    """Every GET route of the app (the dashboard's too) answers HEAD as it answers GET, without a body."""
    client, task_id = api
    templates = [e.path for e in endpoints(client.app) if e.methods and "GET" in e.methods]
    assert len(templates) > 25 and "/ui/tasks/{task_id}" in templates and "/api/v1/tasks/{task_id}" in templates
    params = {"task_id": task_id, "schedule_id": "no-such-schedule", "workflow_id": "no-such-workflow",
              "name": "app.css"}
    for template in templates:
        path = template.format(**params)
        head = client.head(path)
        assert head.status_code != 405 and head.content == b"", (path, head.status_code)
        if template in STREAMS:  # ends at once: the stream stops once its headers are sent
            assert head.status_code == 200 and head.headers["content-type"].startswith("text/event-stream"), path
            continue
        get = client.get(path)
        assert (head.status_code, head.headers.get("content-type")) == \
            (get.status_code, get.headers.get("content-type")), path
    get, head = client.get(f"{V1}/tasks/{task_id}"), client.head(f"{V1}/tasks/{task_id}")
    assert head.headers["content-length"] == str(len(get.content)) and head.headers["etag"] == get.headers["etag"]
    assert client.head(f"{V1}/tasks:batch").status_code == 405  # no GET there: HEAD neither


# ------------------------------------------------------------- hypothesis

#: JSON-ish value texts, standard or not: what a client can put on the wire.
ODD = st.sampled_from([
    "NaN", "Infinity", "-Infinity", "1e400", "-1e400", "18446744073709551616", "-9223372036854775809", "1" * 5000,
    '"\\ud800"', '"a\\udfffb"', '"\\u0000"', '"line\\nbreak"', json.dumps("x" * (MAX_PAYLOAD_BYTES + 10)),
    deep(MAX_JSON_DEPTH + 1), deep(3000), "[", '{"a":}', "01", "1.", ".5", "tru", "'x'", "",
])
SCALARS = st.one_of(
    ODD,
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(st.characters(exclude_categories=()), max_size=12).map(json.dumps),  # lone surrogates too, \u-escaped
    st.sampled_from(["null", "true", "false", '"noop"', '"2024-05-01T12:00:00Z"', '"low"', "0", "-1", "3.5"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
        st.dictionaries(st.text(st.characters(exclude_categories=()), max_size=6).map(json.dumps), inner, max_size=4)
        .map(lambda d: "{" + ",".join(f"{k}:{v}" for k, v in d.items()) + "}"),
    ),
    max_leaves=8,
)
TASK_FIELDS = ["handler", "payload", "priority", "name", "labels", "timeout_s", "retry", "run_at", "depends_on",
               "surprise"]
ROUTES = {
    # route: (method, path, fields a value may go into, how the object becomes the body)
    "task": ("POST", "/tasks", TASK_FIELDS, lambda obj: obj),
    "batch": ("POST", "/tasks:batch", TASK_FIELDS, lambda obj: raw(tasks=f"[{raw(handler=TASK)},{obj}]")),
    "workflow": ("POST", "/workflows", TASK_FIELDS + ["key"], lambda obj: raw(tasks=f"[{obj}]")),
    "patch": ("PATCH", "/tasks/{id}", ["priority", "run_at", "payload", "timeout_s", "retry", "surprise"],
              lambda obj: obj),
    "retry": ("POST", "/tasks/{id}/retry", ["reason", "surprise"], lambda obj: obj),
    "schedule": ("POST", "/schedules", ["cron", "timezone", "name", "start_at", "end_at", "misfire", "task"],
                 lambda obj: obj),
}
BASE = {"task": {"handler": TASK}, "batch": {"handler": TASK}, "workflow": {"handler": TASK, "key": '"a"'},
        "patch": {}, "retry": {}, "schedule": {"cron": '"0 * * * *"', "task": raw(handler=TASK)}}


@st.composite
def bodies(draw) -> tuple[str, str, bytes]:
    route = draw(st.sampled_from(sorted(ROUTES)))
    method, path, fields, wrap = ROUTES[route]
    if draw(st.integers(0, 9)) == 0:  # now and then the whole body is the odd value
        return method, path, draw(VALUES).encode("utf-8", "surrogatepass")
    members = dict(BASE[route])
    for field in draw(st.lists(st.sampled_from(fields), min_size=1, max_size=3, unique=True)):
        members[field] = draw(VALUES)
    if route == "schedule" and "task" not in members:
        members["task"] = raw(handler=TASK)
    elif route == "schedule" and draw(st.booleans()):  # or the odd value inside the task template
        members["task"] = raw(**{"handler": TASK, draw(st.sampled_from(TASK_FIELDS[:7])): draw(VALUES)})
    return method, path, wrap(raw(**members)).encode("utf-8", "surrogatepass")


@hypothesis_settings(max_examples=200)
@given(probe=bodies())
def test_any_body_is_answered_2xx_or_4xx_never_5xx(api, probe: tuple[str, str, bytes]) -> None:
    client, task_id = api
    method, path, content = probe
    r = client.request(method, V1 + path.replace("{id}", task_id), content=content, headers=JSON)
    event(f"{method} {path} -> {r.status_code}")
    assert r.status_code < 500, (method, path, content[:300], r.status_code, r.text[:500])
    if r.status_code >= 400:
        assert r.headers["content-type"] == PROBLEM, r.text[:300]
        assert all(e["field"] for e in r.json().get("errors", [{"field": "?"}])), r.text[:300]
