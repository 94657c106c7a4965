"""What ordinary Kafka tools see in our topics, and the optional Confluent wire format.

Contract under test: on ``<p>.events`` a record's key is the task id in
UTF-8, its ``event-type`` header the record name, and its value Avro
single-object encoding that a reader holding only ``schemas/avro/<Name>.avsc``
decodes (what docs/wire-format.md shows with kcat and rpk). With
``wire_format=confluent`` values are ``00`` + the 4-byte schema id that
``POST /subjects/<subject>/versions`` returned, so a tool holding only the
registry (Redpanda Console) decodes them; ``decode`` reads both framings in
one log whatever the process writes. The registry is a tiny in-process fake
of the Confluent REST API (no registry ships here); the broker is real.
"""

from __future__ import annotations

import io
import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import fastavro
import pytest

from taskstream.schemas import BrokerUnavailable, DecodeError, TaskCreated, TaskQueued, TaskSucceeded, Topics, codec
from taskstream.schemas.registry import SchemaRegistry, SchemaRejected

from ..kafka_helpers import Component, TopicReader, producer

pytestmark = pytest.mark.integration

AVRO = Path(codec.__file__).parent / "avro"
T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


class FakeRegistry:
    """The two calls of the Confluent schema registry REST API we use, in memory.

    Like the real one: one id per distinct schema across subjects, the same id
    when a subject registers a schema again; 409 for a subject marked
    incompatible; 404 with error_code 40403 for an unknown id.
    """

    def __init__(self) -> None:
        self.schemas: list[str] = []
        self.subjects: dict[str, list[int]] = {}
        self.requests: list[tuple[str, str]] = []
        self.incompatible: set[str] = set()
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                registry.requests.append(("POST", self.path))
                parts = self.path.strip("/").split("/")
                if len(parts) != 3 or parts[0] != "subjects" or parts[2] != "versions":
                    return self._answer(404, {"error_code": 404, "message": "not found"})
                subject = unquote(parts[1])
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if subject in registry.incompatible:
                    return self._answer(409, {"error_code": 409, "message": "incompatible"})
                text = json.dumps(json.loads(body["schema"]), sort_keys=True)
                if text not in registry.schemas:
                    registry.schemas.append(text)
                schema_id = registry.schemas.index(text) + 1
                versions = registry.subjects.setdefault(subject, [])
                if schema_id not in versions:
                    versions.append(schema_id)
                self._answer(200, {"id": schema_id})

            def do_GET(self) -> None:
                registry.requests.append(("GET", self.path))
                parts = self.path.strip("/").split("/")
                if len(parts) == 3 and parts[:2] == ["schemas", "ids"] and parts[2].isdigit():
                    i = int(parts[2])
                    if 1 <= i <= len(registry.schemas):
                        return self._answer(200, {"schema": registry.schemas[i - 1]})
                self._answer(404, {"error_code": 40403, "message": "Schema not found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def registry():
    fake = FakeRegistry()
    yield fake
    fake.close()


def _events(task_id: str) -> list:
    return [
        TaskCreated(task_id=task_id, occurred_at=T0, producer="api", handler="echo", payload='{"n": 1}',
                    description="a task read by other tools"),
        TaskQueued(task_id=task_id, occurred_at=T0, producer="processor", attempt=1, priority="medium"),
        TaskSucceeded(task_id=task_id, occurred_at=T0, producer="executor", attempt=1, result='{"ok": true}'),
    ]


def _produce(settings, events, wire: codec.WireFormat = codec.SINGLE_OBJECT) -> None:
    p = producer(settings)
    for e in events:
        p.produce(Topics(settings.prefix).events, wire.encode(e), e.task_id.encode(), headers=codec.headers(e))
    assert p.flush(10) == 0


def _read(settings, count: int) -> list:
    reader = TopicReader(settings, Topics(settings.prefix).events)
    try:
        reader.until(lambda m: len(m) >= count, timeout=15, message=f"{count} records")
        return sorted(reader.messages, key=lambda m: (m.partition(), m.offset()))
    finally:
        reader.close()


# ------------------------------------------------------------ the registry client


def test_registry_client_registers_once_and_fetches_by_id(registry):
    client = SchemaRegistry(registry.url)
    schema = codec.current_schema("TaskCreated")
    first = client.register("taskstream.TaskCreated", schema)
    assert client.register("taskstream.TaskCreated", schema) == first  # cached: one POST
    assert registry.requests == [("POST", "/subjects/taskstream.TaskCreated/versions")]
    assert client.schema(first) == schema  # known from registering: no GET
    fresh = SchemaRegistry(registry.url)
    assert fresh.schema(first) == schema and fresh.schema(first) == schema
    assert registry.requests[1:] == [("GET", f"/schemas/ids/{first}")]
    other = client.register("taskstream.TaskQueued", codec.current_schema("TaskQueued"))
    assert other != first
    with pytest.raises(DecodeError, match="schema id 999 unknown"):
        fresh.schema(999)
    registry.incompatible.add("taskstream.TaskFailed")
    with pytest.raises(SchemaRejected, match="409"):
        client.register("taskstream.TaskFailed", codec.current_schema("TaskFailed"))


def test_registry_unreachable_is_broker_unavailable(registry):
    url = registry.url
    registry.close()
    with pytest.raises(BrokerUnavailable, match="unreachable"):
        SchemaRegistry(url, timeout_s=2).register("taskstream.TaskCreated", codec.current_schema("TaskCreated"))
    wire = codec.WireFormat(registry=SchemaRegistry(url, timeout_s=2))
    with pytest.raises(BrokerUnavailable):  # not poison: the record is fine, the registry is away
        wire.decode(b"\x00\x00\x00\x00\x07" + b"\x00" * 8)


def test_a_confluent_id_of_a_foreign_or_unknown_schema_is_a_decode_error(registry):
    client = SchemaRegistry(registry.url)
    foreign = client.register("other.Order", {"type": "record", "name": "Order", "namespace": "other",
                                              "fields": [{"name": "id", "type": "string"}]})
    wire = codec.WireFormat(registry=SchemaRegistry(registry.url))
    with pytest.raises(DecodeError, match="'other.Order', not one of ours"):
        wire.decode(b"\x00" + foreign.to_bytes(4, "big") + b"\x02x")
    with pytest.raises(DecodeError, match="schema id 4242 unknown"):
        wire.decode(b"\x00" + (4242).to_bytes(4, "big") + b"\x02x")


def test_confluent_format_needs_a_registry_url(settings):
    with pytest.raises(ValueError, match="schema_registry_url"):
        codec.WireFormat.of(settings.model_copy(update={"wire_format": "confluent"}))


# ------------------------------------------------------------ through the broker


def test_default_records_are_readable_with_only_the_schema_files(settings):
    """What kcat -f '%k %h %s' and rpk topic consume show, checked without our codec."""
    events = _events("task-plain")
    _produce(settings, events)
    messages = _read(settings, 3)
    for msg, event in zip(messages, events, strict=True):
        name = type(event).__name__
        assert msg.key() == b"task-plain"
        assert dict(msg.headers()) == {"event-type": name.encode()}
        schema = fastavro.parse_schema(json.loads((AVRO / f"{name}.avsc").read_text()))
        canonical = fastavro.schema.to_parsing_canonical_form(schema)
        value = msg.value()
        assert value[:2] == b"\xc3\x01"
        assert value[2:10].hex() == fastavro.schema.fingerprint(canonical, "CRC-64-AVRO")
        record = fastavro.schemaless_reader(io.BytesIO(value[10:]), schema, None)
        assert record["task_id"] == "task-plain" and record["occurred_at"] == T0
    assert (
        fastavro.schemaless_reader(
            io.BytesIO(messages[0].value()[10:]),
            fastavro.parse_schema(json.loads((AVRO / "TaskCreated.avsc").read_text())),
            None,
        )["description"]
        == "a task read by other tools"
    )


def test_confluent_round_trip_and_a_mixed_log(settings, registry):
    confluent = settings.model_copy(update={"wire_format": "confluent", "schema_registry_url": registry.url})
    written = _events("task-confluent")
    _produce(settings, written, codec.WireFormat.of(confluent))
    later = _events("task-single")
    _produce(settings, later, codec.WireFormat.of(settings))  # single-object records later in the same log

    messages = _read(settings, 6)
    by_task: dict[str, list] = {}
    for m in messages:
        by_task.setdefault(m.key().decode(), []).append(m)
    # Each type registered once, under its record-name subject.
    assert sorted(registry.subjects) == ["taskstream.TaskCreated", "taskstream.TaskQueued", "taskstream.TaskSucceeded"]
    assert [r for r in registry.requests if r[0] == "POST"] == [
        ("POST", f"/subjects/taskstream.{type(e).__name__}/versions") for e in written
    ]
    for msg, event in zip(by_task["task-confluent"], written, strict=True):
        name = type(event).__name__
        value = msg.value()
        schema_id = int.from_bytes(value[1:5], "big")
        assert value[:1] == b"\x00" and registry.subjects[f"taskstream.{name}"] == [schema_id]
        assert dict(msg.headers()) == {"event-type": name.encode()}
        # What Console does: schema by id from the registry, then the body. No taskstream code.
        schema = fastavro.parse_schema(json.loads(registry.schemas[schema_id - 1]))
        assert fastavro.schemaless_reader(io.BytesIO(value[5:]), schema, None)["task_id"] == "task-confluent"
    assert all(m.value()[:2] == b"\xc3\x01" for m in by_task["task-single"])

    # A new process configured single-object, with the registry: reads the whole mixed log.
    reader = codec.WireFormat.of(settings.model_copy(update={"schema_registry_url": registry.url}))
    assert not reader.confluent
    gets = len(registry.requests)
    assert [reader.decode(m.value()) for m in by_task["task-confluent"]] == written
    assert [reader.decode(m.value()) for m in by_task["task-single"]] == later
    assert len(registry.requests) - gets == 3  # one GET per schema id, then cached
    assert [reader.writer_version(m.value()) for m in by_task["task-confluent"]] == [
        9,
        3,
        1,
    ]  # TaskCreated v9 (trace context), TaskQueued v3 (cause), TaskSucceeded v1

    # Without a registry the Confluent records are a clear DecodeError, the others still decode.
    plain = codec.WireFormat.of(settings)
    with pytest.raises(DecodeError, match="no schema registry configured"):
        plain.decode(by_task["task-confluent"][0].value())
    assert plain.decode(by_task["task-single"][0].value()) == later[0]


def test_a_confluent_record_of_an_older_released_schema_resolves(settings, registry):
    # Another writer registered TaskCreated v1 (a release-1 producer with the Confluent serializer).
    client = SchemaRegistry(registry.url)
    v1 = json.loads((AVRO / "history" / "TaskCreated.v1.avsc").read_text())
    schema_id = client.register("taskstream.TaskCreated", v1)
    record = {"event_id": "e1", "task_id": "t-old", "occurred_at": T0, "producer": "api", "handler": "echo",
              "priority": "low", "payload": "null"}
    buf = io.BytesIO()
    buf.write(b"\x00" + schema_id.to_bytes(4, "big"))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(v1), {**{f["name"]: f.get("default") for f in v1["fields"]},
                                                               **record})
    p = producer(settings)
    p.produce(Topics(settings.prefix).events, buf.getvalue(), b"t-old", headers=[("event-type", b"TaskCreated")])
    assert p.flush(10) == 0
    (msg,) = _read(settings, 1)
    wire = codec.WireFormat.of(settings.model_copy(update={"schema_registry_url": registry.url}))
    value = wire.decode(msg.value())
    assert isinstance(value, TaskCreated) and value.priority == "low" and value.description == ""
    assert wire.writer_version(msg.value()) == 1


def test_a_processor_set_to_confluent_writes_every_record_in_it(settings, registry, tmp_path):
    """The wire format is the process's settings, handed to each component: not a module global left at a default."""
    confluent = settings.model_copy(update={"wire_format": "confluent", "schema_registry_url": registry.url})
    topics = Topics(settings.prefix)
    proc = Component(confluent, "processor", log_path=tmp_path / "processor.log")
    ready = TopicReader(settings, *topics.all_ready)
    state = TopicReader(settings, topics.state)
    try:
        _produce(settings, _events("task-c")[:1])  # a single-object TaskCreated: read whatever the process writes
        ready.until(lambda m: len(m) >= 1, timeout=60, message="the ready message")
        state.until(lambda m: any(x.key() == b"task-c" for x in m), timeout=60, message="the task's state")
    finally:
        proc.stop()
        ready.close()
        state.close()
    reader = codec.WireFormat.of(confluent)
    for m in [*ready.messages, *(x for x in state.messages if x.key() == b"task-c")]:
        assert m.value()[:1] == b"\x00", m.value()[:10]
        assert reader.decode(m.value()).task_id == "task-c"
    assert {"taskstream.ReadyTask", "taskstream.TaskState", "taskstream.TaskQueued"} <= set(registry.subjects)
