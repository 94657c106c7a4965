"""The codec is the one seam between values and bytes (DESIGN §3, STYLE §2).

Contract under test: every record type round-trips exactly through Avro
single-object encoding (``C3 01`` + CRC-64-AVRO fingerprint + body); the
fingerprint is the one any Avro implementation computes from the schema's
Parsing Canonical Form; the record name travels in a header; and ``decode``
raises ``DecodeError`` -- never anything else -- on bytes it cannot read.
"""

from __future__ import annotations

import dataclasses
import io
import json
from datetime import UTC, datetime, timezone
from pathlib import Path

import fastavro
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from taskstream.schemas import DecodeError, TaskStarted, codec
from taskstream.schemas.events import EVENT_TYPES, RECORD_TYPES

from . import strategies as s

AVRO_DIR = Path(codec.__file__).parent / "avro"
RECORD_NAMES = sorted(RECORD_TYPES)


# ----------------------------------------------------------- independent CRC-64


def _crc64_avro(data: bytes) -> bytes:
    """CRC-64-AVRO as the Avro specification writes it, little-endian bytes."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for b in data:
        fp = (fp >> 8) ^ table[(fp ^ b) & 0xFF]
    return fp.to_bytes(8, "little")


def _canonical_form(name: str) -> str:
    raw = json.loads((AVRO_DIR / f"{name}.avsc").read_text())
    return fastavro.schema.to_parsing_canonical_form(fastavro.parse_schema(raw))


def test_crc64_implementation_matches_spec_vectors():
    # Avro spec: the fingerprint of the canonical form of a primitive.
    assert _crc64_avro(b'"int"').hex() == fastavro.schema.fingerprint('"int"', "CRC-64-AVRO")


def test_every_record_type_has_a_schema_file_and_vice_versa():
    assert {p.stem for p in AVRO_DIR.glob("*.avsc")} == set(RECORD_TYPES)
    assert set(EVENT_TYPES) <= set(RECORD_TYPES.values())


@pytest.mark.parametrize("name", RECORD_NAMES)
def test_fingerprint_is_crc64_avro_of_parsing_canonical_form(name):
    canonical = _canonical_form(name)
    expected = _crc64_avro(canonical.encode())
    assert expected.hex() == fastavro.schema.fingerprint(canonical, "CRC-64-AVRO")
    value = _sample(name)
    data = codec.encode(value)
    assert data[:2] == b"\xc3\x01" == codec.MAGIC
    assert data[2:10] == expected


def test_fingerprints_are_distinct():
    fps = {_crc64_avro(_canonical_form(n).encode()) for n in RECORD_NAMES}
    assert len(fps) == len(RECORD_NAMES)


# --------------------------------------------------------------------- round trip

T0 = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def _sample(name: str):
    """A minimal hand-built value of each record type."""
    base = dict(task_id="t1", occurred_at=T0, producer="p")
    schedule = dict(schedule_id="s1", occurred_at=T0, producer="p")
    gate = dict(gate_id="concurrency:k", occurred_at=T0, producer="p")
    control = dict(control_id="control:0:handler:h", target="handler:h", partition=0, occurred_at=T0, producer="p")
    return {
        "TaskCreated": lambda: RECORD_TYPES[name](**base, handler="echo"),
        "TaskQueued": lambda: RECORD_TYPES[name](**base, attempt=1, priority="high"),
        "TaskStarted": lambda: RECORD_TYPES[name](**base, attempt=1),
        "TaskSucceeded": lambda: RECORD_TYPES[name](**base, attempt=1),
        "TaskFailed": lambda: RECORD_TYPES[name](**base, attempt=1, error="boom"),
        "ReadyTask": lambda: RECORD_TYPES[name](**base, attempt=1, handler="echo", priority="low", payload="{}"),
        "DependencyRegistered": lambda: RECORD_TYPES[name](**base, dependent="t2"),
        "DependencyResolved": lambda: RECORD_TYPES[name](**base, upstream="t0", outcome="succeeded"),
        "TaskCancelled": lambda: RECORD_TYPES[name](**base),
        "TaskUpdated": lambda: RECORD_TYPES[name](**base, priority="high"),
        "TaskCheckpointed": lambda: RECORD_TYPES[name](**base, attempt=2, data='{"done": 1}'),
        "TaskRetryScheduled": lambda: RECORD_TYPES[name](**base, attempt=1, not_before=T0, delay_s=0.5, priority="low"),
        "TaskDeadLettered": lambda: RECORD_TYPES[name](**base, attempt=3, error="boom"),
        "LeaseExpired": lambda: RECORD_TYPES[name](**base, attempt=1, lease_s=30.0),
        "TaskRedriven": lambda: RECORD_TYPES[name](**base),
        "ScheduleCreated": lambda: RECORD_TYPES[name](**schedule, cron="* * * * *"),
        "ScheduleFired": lambda: RECORD_TYPES[name](**schedule, fire_at=T0, created_task_id="t9"),
        "ScheduleDeleted": lambda: RECORD_TYPES[name](**schedule),
        "SchedulePaused": lambda: RECORD_TYPES[name](**schedule, reason="holiday", actor="k1"),
        "ScheduleResumed": lambda: RECORD_TYPES[name](**schedule),
        "ScheduleTriggered": lambda: RECORD_TYPES[name](**schedule, created_task_id="t9", actor="k1"),
        "ScheduleBackfilled": lambda: RECORD_TYPES[name](**schedule, start=T0, end=T0, max_concurrent=2, count=1),
        "SlotRequested": lambda: RECORD_TYPES[name](**gate, holder="t1", attempt=1, priority="high", limit=2),
        "SlotReleased": lambda: RECORD_TYPES[name](**gate, holder="t1", attempt=1),
        "GateWoken": lambda: RECORD_TYPES[name](**gate),
        "SlotGranted": lambda: RECORD_TYPES[name](**base, gate_id="concurrency:k", attempt=1),
        "ControlPaused": lambda: RECORD_TYPES[name](**control, reason="deploy", actor="k1"),
        "ControlResumed": lambda: RECORD_TYPES[name](**control, actor="k1"),
        "ControlLimited": lambda: RECORD_TYPES[name](**control, limit=2, actor="k1"),
        "TaskHeld": lambda: RECORD_TYPES[name](**base, attempt=1, waiting_for="paused:handler:h", version=3,
                                               cause="e1"),
        "TaskReleased": lambda: RECORD_TYPES[name](**base, attempt=1, waiting_for="paused:handler:h"),
        "TriggerCreated": lambda: RECORD_TYPES[name](trigger_id="trigger:t", occurred_at=T0, producer="p", name="t",
                                                    topic="orders", sasl_password="secret"),
        "TriggerPaused": lambda: RECORD_TYPES[name](trigger_id="trigger:t", occurred_at=T0, producer="p"),
        "TriggerResumed": lambda: RECORD_TYPES[name](trigger_id="trigger:t", occurred_at=T0, producer="p"),
        "TriggerDeleted": lambda: RECORD_TYPES[name](trigger_id="trigger:t", occurred_at=T0, producer="p"),
        "TriggerState": lambda: RECORD_TYPES[name](trigger_id="trigger:t", name="t", topic="orders", template="{}",
                                                  status="active", created_at=T0, updated_at=T0),
        "ControlState": lambda: RECORD_TYPES[name](
            control_id="control:0:handler:h", target="handler:h", partition=0, created_at=T0, updated_at=T0,
            paused=True, paused_at=T0, paused_by="k1",
        ),
        "GateState": lambda: RECORD_TYPES[name](
            gate_id="concurrency:k", created_at=T0, updated_at=T0, limit=2, holders={"t1": 1}, waiting=["t2"],
            waiting_attempts={"t2": 1}, waiting_priorities={"t2": "low"}, admitted=["t1"], rate=5, per_s=1.0,
            spent=[T0],
        ),
        "Heartbeat": lambda: RECORD_TYPES[name](**base, attempt=1),
        "ScheduleState": lambda: RECORD_TYPES[name](
            schedule_id="s1", cron="* * * * *", timezone="UTC", template="{}", status="active", created_at=T0,
            updated_at=T0,
        ),
        "TaskState": lambda: RECORD_TYPES[name](
            task_id="t1", handler="echo", status="queued", priority="medium", payload="{}", created_at=T0, updated_at=T0
        ),
        "ApiKey": lambda: RECORD_TYPES[name](
            key_id="0123456789abcdef", name="ci", role="operator", secret_hash="00" * 32, created_at=T0, producer="p",
            handlers=["email.*"], revoked_at=T0,
        ),
        "WorkerReport": lambda: RECORD_TYPES[name](
            executor_id="executor-h-1", host="h", pid=42, version="0.1.0", handlers=["echo", "noop"], concurrency=4,
            partitions=["taskstream.ready.high:0"], in_flight=1, running=["t1"], started_at=T0, reported_at=T0,
            interval_s=5.0,
        ),
    }[name]()


def _assert_same(decoded, value):
    assert type(decoded) is type(value)
    assert decoded == value
    for f in dataclasses.fields(value):
        got, want = getattr(decoded, f.name), getattr(value, f.name)
        assert type(got) is type(want) or (isinstance(want, float) and isinstance(got, float)), f.name
        if isinstance(want, datetime):
            assert got.tzinfo is not None and got.utcoffset().total_seconds() == 0, f.name
            assert got.microsecond == want.microsecond, f.name


@pytest.mark.parametrize("name", RECORD_NAMES)
def test_hand_built_sample_round_trips(name):
    value = _sample(name)
    _assert_same(codec.decode(codec.encode(value)), value)


def test_strategies_cover_every_record_type():
    assert set(s.BY_RECORD) == set(RECORD_TYPES)


@pytest.mark.parametrize("name", RECORD_NAMES)
def test_round_trip_every_record_type(name):
    @settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
    @given(s.BY_RECORD[name])
    def check(value):
        data = codec.encode(value)
        assert data[:2] == codec.MAGIC
        _assert_same(codec.decode(data), value)
        # Encoding is a function of the value: same bytes again, and from the copy.
        assert codec.encode(codec.decode(data)) == data
        assert codec.headers(value) == [(codec.EVENT_TYPE_HEADER, name.encode())]
        assert codec.type_name(value) == name

    check()


@given(s.any_record)
def test_decode_accepts_bytearray_and_memoryview(value):
    data = codec.encode(value)
    assert codec.decode(bytearray(data)) == value
    assert codec.decode(memoryview(data)) == value


def test_optional_fields_none_vs_set_survive():
    created = RECORD_TYPES["TaskCreated"]
    unset = created(task_id="t", occurred_at=T0, producer="p", handler="h")
    setv = dataclasses.replace(
        unset,
        run_at=T0,
        timeout_s=0.0,
        labels={"": "", "ключ": "值"},
        depends_on=["a", "a"],
        name="ñ",
        payload='{"x":1}',
    )
    for v in (unset, setv):
        _assert_same(codec.decode(codec.encode(v)), v)
    # 0.0 is not None: the union branch must survive.
    assert codec.decode(codec.encode(setv)).timeout_s == 0.0


def test_timestamps_in_other_timezones_decode_to_the_same_instant_in_utc():
    from datetime import timedelta

    local = datetime(2024, 1, 1, 5, 0, 0, 1, tzinfo=timezone(timedelta(hours=5)))
    e = TaskStarted(task_id="t", occurred_at=local, producer="p", attempt=1)
    got = codec.decode(codec.encode(e)).occurred_at
    assert got == local and got.utcoffset().total_seconds() == 0 and got.microsecond == 1


def test_headers_carry_the_record_name():
    for name in RECORD_NAMES:
        assert codec.headers(_sample(name)) == [("event-type", name.encode())]


def test_encode_rejects_unknown_types():
    with pytest.raises(KeyError):
        codec.encode(object())


# ------------------------------------------------------------------ decode errors


def _valid_blobs():
    return [codec.encode(_sample(n)) for n in RECORD_NAMES]


@pytest.mark.parametrize(
    "data",
    [
        None,
        b"",
        bytearray(),
        b"\xc3",
        b"\xc3\x01",
        b"\xc3\x01\x00\x01\x02",
        b"\xc3\x01" + b"\x00" * 7,
        b"\xc3\x01" + b"\x00" * 8,  # unknown fingerprint, empty body
        b"\xc3\x01" + b"\xff" * 8 + b"body",
        b"\xc3\x02" + b"\x00" * 20,
        b"\x00\x00\x00\x00\x01" + b"\x00" * 20,  # Confluent wire format
        b'{"task_id": "t"}',
        "not bytes at all",
    ],
)
def test_decode_raises_decode_error_on_garbage(data):
    with pytest.raises(DecodeError):
        codec.decode(data)


@pytest.mark.parametrize("index", range(len(RECORD_NAMES)))
def test_wrong_magic_on_a_valid_body(index):
    data = _valid_blobs()[index]
    for magic in (b"\xc3\x00", b"\x01\xc3", b"\x00\x00", b"Ob"):
        with pytest.raises(DecodeError, match="C3 01"):
            codec.decode(magic + data[2:])


@pytest.mark.parametrize("index", range(len(RECORD_NAMES)))
def test_unknown_fingerprint_on_a_valid_body(index):
    data = _valid_blobs()[index]
    fp = bytearray(data[2:10])
    fp[0] ^= 0xFF
    with pytest.raises(DecodeError, match="fingerprint"):
        codec.decode(data[:2] + bytes(fp) + data[10:])


@pytest.mark.parametrize("index", range(len(RECORD_NAMES)))
def test_every_truncation_raises_decode_error(index):
    data = _valid_blobs()[index]
    for n in range(len(data)):
        with pytest.raises(DecodeError):
            codec.decode(data[:n])


@pytest.mark.parametrize("name", RECORD_NAMES)
def test_body_of_another_type_raises_or_decodes_as_that_type_only(name):
    # A body glued behind the wrong fingerprint must never leak a non-DecodeError.
    body = codec.encode(_sample(name))[10:]
    for other in RECORD_NAMES:
        header = codec.encode(_sample(other))[:10]
        try:
            value = codec.decode(header + body)
        except DecodeError:
            continue
        assert type(value) is RECORD_TYPES[other]


@settings(max_examples=500)
@given(st.binary(max_size=200))
@example(b"")
@example(b"\xc3\x01")
def test_arbitrary_bytes_only_ever_raise_decode_error(data):
    try:
        codec.decode(data)
    except DecodeError:
        pass


@settings(max_examples=500)
@given(st.sampled_from(RECORD_NAMES), st.binary(max_size=120))
def test_known_fingerprint_with_arbitrary_body_only_raises_decode_error(name, body):
    header = codec.encode(_sample(name))[:10]
    try:
        value = codec.decode(header + body)
    except DecodeError:
        return
    assert type(value) is RECORD_TYPES[name]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(s.any_record, st.data())
def test_corrupted_valid_messages_only_raise_decode_error(value, data):
    blob = bytearray(codec.encode(value))
    assume(len(blob) > 10)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(10, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    try:
        codec.decode(bytes(blob[:cut]))
    except DecodeError:
        pass


def test_decode_error_chains_the_library_error():
    data = codec.encode(_sample("TaskCreated"))
    with pytest.raises(DecodeError) as info:
        codec.decode(data[:-3])
    assert info.value.__cause__ is not None


def test_trailing_bytes_after_the_body_are_rejected():
    with pytest.raises(DecodeError):
        codec.decode(codec.encode(_sample("TaskStarted")) + b"junk")


# --------------------------------------------------------------------------- JSON


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_json_round_trip(value):
    text = codec.dumps_json(value)
    assert isinstance(text, str)
    assert codec.loads_json(text) == value
    assert codec.loads_json(text.encode()) == value
    assert codec.dumps_json_bytes(value) == text.encode()
    assert codec.loads_json(codec.dumps_json_bytes(value)) == value


def test_loads_json_none_is_none_and_bad_text_raises_json_decode_error():
    assert codec.loads_json(None) is None
    assert codec.loads_json("null") is None
    with pytest.raises(codec.JSONDecodeError):
        codec.loads_json("{not json")
    assert issubclass(codec.JSONDecodeError, ValueError)


def test_payload_json_survives_inside_an_avro_record():
    payload = codec.dumps_json({"ü": [1, 2.5, None, "\u2028"], "n": 2**63 - 1})
    ready = _sample("ReadyTask")
    ready = dataclasses.replace(ready, payload=payload)
    assert codec.loads_json(codec.decode(codec.encode(ready)).payload) == codec.loads_json(payload)


def test_independent_reader_decodes_our_body():
    # Any Avro reader with the schema file can read the body (no registry, no codec).
    value = _sample("TaskCreated")
    data = codec.encode(value)
    raw = json.loads((AVRO_DIR / "TaskCreated.avsc").read_text())
    rec = fastavro.schemaless_reader(io.BytesIO(data[10:]), fastavro.parse_schema(raw), None)
    assert rec["task_id"] == "t1" and rec["handler"] == "echo" and rec["occurred_at"] == T0
