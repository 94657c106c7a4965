"""The one seam between taskstream's values and bytes.

Kafka messages carry Avro single-object encoding (``C3 01``, the 8-byte
CRC-64-AVRO fingerprint of the writer schema, then the Avro binary body), so
any reader holding ``schemas/avro`` decodes a message without a registry.
With ``wire_format=confluent`` (``configure``) records are written in the
Confluent wire format instead (``00``, a 4-byte big-endian schema id from a
schema registry, then the same body), which Redpanda Console and Confluent
deserializers decode on their own. ``decode`` always accepts both, so
switching the format never makes a log unreadable.
The record name also travels in the ``event-type`` header, for people
looking at topics with kcat or rpk. JSON (orjson) is used only for payloads
and results, which are JSON documents carried as text inside the records,
and at the HTTP edge.

Schema evolution: every schema file carries a ``version`` (the release of
the schema set in which that record last changed) and every released
writer schema stays in ``avro/history/<Name>.v<N>.avsc``. A record written
with any of them is read with Avro schema resolution into today's schema
(added fields take their defaults, removed ones are skipped, renamed ones
follow ``aliases``); what resolution cannot express is an upcaster in
``_UPCASTERS``. The rules are in README "Schema evolution".

``encode(value) -> bytes`` and ``decode(bytes) -> value`` are the contract;
anything that cannot be decoded raises ``DecodeError`` (poison: to the DLQ);
the only other error is ``BrokerUnavailable`` when a Confluent schema id must
be looked up and the registry cannot be reached (transient, not poison).
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import threading
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

import fastavro
import orjson
from fastavro.schema import fingerprint, to_parsing_canonical_form

from .errors import DecodeError
from .events import RECORD_TYPES

if TYPE_CHECKING:
    from .registry import SchemaRegistry
    from .settings import Settings

MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
EVENT_TYPE_HEADER = "event-type"
NAMESPACE = "taskstream"


@dataclasses.dataclass(frozen=True, slots=True)
class _Codec:
    """Today's (reader and writer) schema of one record type."""

    name: str
    cls: type
    schema: Any
    raw: dict
    version: int
    header: bytes
    fields: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class _Writer:
    """A released writer schema and how to read its records into today's type."""

    codec: _Codec
    version: int
    schema: Any
    fingerprint: bytes
    current: bool  # today's schema: no resolution, no upcasting


#: ``(record name, writer version) -> fn(dict) -> dict``, applied to a record
#: written with that version after Avro resolution, oldest version first up to
#: today's. Use one when resolution cannot express a change: a field split in
#: two, a changed meaning or unit, a type change without an Avro promotion.
#: Example (hypothetical): ``timeout_ms`` (int) became ``timeout_s`` (double)
#: in version 4 -> keep the v3 schema in history, give ``timeout_s`` a default
#: in v4, and register
#: ``_UPCASTERS[("TaskCreated", 3)] = lambda r: {**r, "timeout_s": r.pop("timeout_ms") / 1000}``
#: (the v3 writer's ``timeout_ms`` reaches it only if v4's reader keeps that
#: field, so keep it as a deprecated optional field until no log holds v3).
_UPCASTERS: dict[tuple[str, int], Callable[[dict], dict]] = {}

_HISTORY_FILE = re.compile(r"^(?P<name>[A-Za-z]+)\.v(?P<version>[0-9]+)\.avsc$")


def _fingerprint(parsed: Any) -> bytes:
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


def _load() -> tuple[dict[type, _Codec], dict[bytes, _Writer], dict[str, dict[int, dict]]]:
    by_type: dict[type, _Codec] = {}
    by_fp: dict[bytes, _Writer] = {}
    history: dict[str, dict[int, dict]] = {}
    folder = resources.files(__package__) / "avro"
    for entry in (folder / "history").iterdir():
        if (m := _HISTORY_FILE.match(entry.name)) is not None:
            history.setdefault(m["name"], {})[int(m["version"])] = json.loads(entry.read_text())
    for name, cls in RECORD_TYPES.items():
        raw = json.loads((folder / f"{name}.avsc").read_text())
        version = raw.get("version")
        released = history.get(name, {})
        if {k: v for k, v in raw.items() if k != "version"} != released.get(version):
            raise RuntimeError(
                f"{name}.avsc (version {version}) differs from avro/history/{name}.v{version}.avsc: a changed "
                "schema needs a new version number and its copy in avro/history (README: Schema evolution)"
            )
        parsed = fastavro.parse_schema(raw)
        avro_fields = tuple(f["name"] for f in raw["fields"])
        py_fields = {f.name for f in dataclasses.fields(cls)}
        if set(avro_fields) != py_fields:
            raise RuntimeError(f"{name}: dataclass fields {sorted(py_fields)} != schema fields {sorted(avro_fields)}")
        codec = _Codec(name, cls, parsed, raw, version, MAGIC + _fingerprint(parsed), avro_fields)
        by_type[cls] = codec
        for v, old in sorted(released.items()):
            old_parsed = fastavro.parse_schema(old)
            fp = _fingerprint(old_parsed)
            # Same canonical form (only docs or defaults changed): one encoding, read as the newest.
            current = fp == codec.header[2:]
            by_fp[fp] = _Writer(codec, v, parsed if current else old_parsed, fp, current)
    return by_type, by_fp, history


_BY_TYPE, _BY_FINGERPRINT, _HISTORY = _load()


def schema_versions() -> dict[str, dict[int, dict]]:
    """Every released writer schema: ``{record name: {version: schema JSON}}``."""
    return {name: dict(versions) for name, versions in _HISTORY.items()}


def current_schema(name: str) -> dict:
    """Today's schema of record ``name`` as JSON (what ``encode`` writes)."""
    return next(c.raw for c in _BY_TYPE.values() if c.name == name)


# ------------------------------------------------------------ wire format


@dataclasses.dataclass(slots=True)
class _Wire:
    confluent: bool = False
    registry: SchemaRegistry | None = None
    ids: dict[str, int] = dataclasses.field(default_factory=dict)  # record name -> schema id we write
    writers: dict[int, _Writer] = dataclasses.field(default_factory=dict)  # schema id -> how to read it
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


_wire = _Wire()


def configure(settings: Settings | None = None, *, registry: SchemaRegistry | None = None) -> None:
    """Choose the framing this process writes and the registry it reads Confluent ids from.

    Call once at process start with the process's ``Settings`` (without it:
    single-object, no registry). ``registry`` overrides the one built from
    ``settings.schema_registry_url``. ``decode`` reads both framings whatever
    is configured; Confluent-framed records need a registry to be read.
    """
    global _wire
    confluent = settings is not None and settings.wire_format == "confluent"
    if registry is None and settings is not None and settings.schema_registry_url:
        from .registry import SchemaRegistry

        registry = SchemaRegistry.from_settings(settings)
    if confluent and registry is None:
        raise ValueError("wire_format=confluent needs schema_registry_url (TASKSTREAM_SCHEMA_REGISTRY_URL)")
    _wire = _Wire(confluent=confluent, registry=registry)


def subject(name: str) -> str:
    """Registry subject of record ``name``: the record's full name (RecordNameStrategy).

    One topic holds many record types (``<p>.events`` has 17), so the
    per-topic subject ``<topic>-value`` would reject the second type as an
    incompatible version; a subject per record type keeps each type's own
    evolution checked by the registry.
    """
    return f"{NAMESPACE}.{name}"


def _confluent_header(codec: _Codec, wire: _Wire) -> bytes:
    schema_id = wire.ids.get(codec.name)
    if schema_id is None:
        assert wire.registry is not None
        schema_id = wire.registry.register(subject(codec.name), codec.raw)
        with wire.lock:
            wire.ids[codec.name] = schema_id
            wire.writers[schema_id] = _BY_FINGERPRINT[codec.header[2:]]
    return CONFLUENT_MAGIC + schema_id.to_bytes(4, "big")


def encode(value: Any) -> bytes:
    """Encode an event, ready message or state in the configured wire format.

    In the Confluent format the first record of each type registers today's
    schema (``BrokerUnavailable`` if the registry cannot be reached).
    """
    codec = _BY_TYPE[type(value)]
    wire = _wire
    buf = io.BytesIO()
    buf.write(_confluent_header(codec, wire) if wire.confluent else codec.header)
    fastavro.schemaless_writer(buf, codec.schema, {f: getattr(value, f) for f in codec.fields})
    return buf.getvalue()


def _confluent_writer(schema_id: int) -> _Writer:
    wire = _wire
    writer = wire.writers.get(schema_id)
    if writer is not None:
        return writer
    if wire.registry is None:
        raise DecodeError(
            f"no C3 01 marker; Confluent-framed record with schema id {schema_id} but no schema registry "
            "configured (TASKSTREAM_SCHEMA_REGISTRY_URL)"
        )
    raw = wire.registry.schema(schema_id)  # DecodeError if unknown, BrokerUnavailable if unreachable
    try:
        parsed = fastavro.parse_schema(raw)
        full_name = parsed.get("name") if isinstance(parsed, dict) else None
    except Exception as exc:
        raise DecodeError(f"schema id {schema_id} is not an Avro schema we can parse: {exc}") from exc
    codec = next((c for c in _BY_TYPE.values() if f"{NAMESPACE}.{c.name}" == full_name), None)
    if codec is None:
        raise DecodeError(f"schema id {schema_id} is {full_name or 'not a record'!r}, not one of ours")
    fp = _fingerprint(parsed)
    writer = _BY_FINGERPRINT.get(fp)
    if writer is None or writer.codec is not codec:
        # Not a schema we released (another writer's version): resolved like any other writer schema.
        writer = _Writer(codec, 0, parsed, fp, False)
    with wire.lock:
        wire.writers[schema_id] = writer
    return writer


_new = object.__new__
_set = object.__setattr__


def _build(codec: _Codec, record: dict) -> Any:
    """The dataclass of a decoded record, built without its ``__init__``.

    fastavro returns exactly the reader schema's fields (the import-time check
    makes them the dataclass's fields), so the generated frozen ``__init__``
    (one ``object.__setattr__`` call per field plus defaults) would only cost
    time: this is ~5x cheaper and the decode is the fold's hot spot. A field
    missing from an upcaster's output is still a DecodeError (KeyError).
    """
    value = _new(codec.cls)
    for name in codec.fields:
        _set(value, name, record[name])
    return value


def decode(data: bytes | None) -> Any:
    """Decode a single-object or Confluent-framed Avro record into today's dataclass.

    A record written with any released schema version is resolved to
    today's schema, then upcast; ``DecodeError`` on anything else.
    """
    if not data or len(data) < 5:
        raise DecodeError("not Avro single-object encoding (missing C3 01 marker)")
    if data[:1] == CONFLUENT_MAGIC:
        writer, start = _confluent_writer(int.from_bytes(data[1:5], "big")), 5
    elif data[:2] != MAGIC or len(data) < 10:
        raise DecodeError("not Avro single-object encoding (missing C3 01 marker)")
    else:
        writer, start = _BY_FINGERPRINT.get(bytes(data[2:10])), 10
        if writer is None:
            raise DecodeError(f"unknown schema fingerprint {bytes(data[2:10]).hex()}")
    codec = writer.codec
    body = io.BytesIO(data[start:])
    try:
        if writer.current:
            record = fastavro.schemaless_reader(body, codec.schema, None)
        else:
            record = fastavro.schemaless_reader(body, writer.schema, codec.schema)
            for version in range(writer.version, codec.version):
                if (upcast := _UPCASTERS.get((codec.name, version))) is not None:
                    record = upcast(record)
        value = _build(codec, record)
    except Exception as exc:  # fastavro raises many types on corrupt input
        raise DecodeError(f"corrupt {codec.name} record: {exc}") from exc
    if body.tell() != len(data) - start:
        raise DecodeError(f"corrupt {codec.name} record: {len(data) - start - body.tell()} bytes after the body")
    return value


def writer_version(data: bytes) -> int | None:
    """The released schema version a record was written with (``None``: not one we know)."""
    if data[:2] == MAGIC:
        writer = _BY_FINGERPRINT.get(bytes(data[2:10]))
        return None if writer is None else writer.version
    if data[:1] == CONFLUENT_MAGIC:
        writer = _wire.writers.get(int.from_bytes(data[1:5], "big"))
        return None if writer is None or writer.version == 0 else writer.version
    return None


def type_name(value: Any) -> str:
    return _BY_TYPE[type(value)].name


def headers(value: Any) -> list[tuple[str, bytes]]:
    """Kafka headers for a message holding ``value``: the record name for humans and tools."""
    return [(EVENT_TYPE_HEADER, _BY_TYPE[type(value)].name.encode())]


def dumps_json(value: Any) -> str:
    return orjson.dumps(value).decode()


def dumps_json_bytes(value: Any) -> bytes:
    return orjson.dumps(value)


def loads_json(text: str | bytes | None) -> Any:
    if text is None:
        return None
    return orjson.loads(text)


JSONDecodeError = orjson.JSONDecodeError
