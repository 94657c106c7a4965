"""The one seam between taskstream's values and bytes.

Kafka messages carry Avro single-object encoding (``C3 01``, the 8-byte
CRC-64-AVRO fingerprint of the writer schema, then the Avro binary body), so
any reader holding ``schemas/avro`` decodes a message without a registry.
With ``wire_format=confluent`` (a ``WireFormat`` built from the settings) records are written in the
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
``_UPCASTERS``. The rules are in docs/wire-format.md, "Schema evolution".

``WireFormat.encode(value) -> bytes`` and ``WireFormat.decode(bytes) -> value``
are the contract (module-level ``encode``/``decode`` use ``SINGLE_OBJECT``);
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
from typing import TYPE_CHECKING, Any, cast

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
    raw: dict[str, Any]
    version: int
    header: bytes
    fields: tuple[str, ...]  # written, in schema order (a derived one read from its property)
    attrs: tuple[str, ...]  # read back: the dataclass's fields


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
_UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {}


def _schedule_id_from_task_id(record: dict[str, Any]) -> dict[str, Any]:
    """Schema set 5 gave schedule events ``schedule_id``; before it the id travelled in ``task_id`` only."""
    return {**record, "schedule_id": record.get("schedule_id") or record["task_id"]}


for _name in ("ScheduleCreated", "ScheduleFired", "ScheduleDeleted"):
    _UPCASTERS[(_name, 4)] = _schedule_id_from_task_id

_HISTORY_FILE = re.compile(r"^(?P<name>[A-Za-z]+)\.v(?P<version>[0-9]+)\.avsc$")


def _fingerprint(parsed: Any) -> bytes:
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


def _load() -> tuple[dict[type, _Codec], dict[bytes, _Writer], dict[str, dict[int, dict[str, Any]]]]:
    by_type: dict[type, _Codec] = {}
    by_fp: dict[bytes, _Writer] = {}
    history: dict[str, dict[int, dict[str, Any]]] = {}
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
                "schema needs a new version number and its copy in avro/history (docs/wire-format.md: Schema evolution)"
            )
        parsed = fastavro.parse_schema(raw)
        avro_fields = tuple(f["name"] for f in raw["fields"])
        py_fields = tuple(f.name for f in dataclasses.fields(cls))
        derived = set(avro_fields) - set(py_fields)
        if set(py_fields) - set(avro_fields) or any(not isinstance(getattr(cls, f, None), property) for f in derived):
            raise RuntimeError(f"{name}: dataclass fields {sorted(py_fields)} != schema fields {sorted(avro_fields)} "
                               "(a schema field the dataclass lacks must be a property of it: derived, written only)")
        codec = _Codec(name, cls, parsed, raw, version, MAGIC + _fingerprint(parsed), avro_fields, py_fields)
        by_type[cls] = codec
        for v, old in sorted(released.items()):
            old_parsed = fastavro.parse_schema(old)
            fp = _fingerprint(old_parsed)
            # Same canonical form (only docs or defaults changed): one encoding, read as the newest.
            current = fp == codec.header[2:]
            by_fp[fp] = _Writer(codec, v, parsed if current else old_parsed, fp, current)
    return by_type, by_fp, history


_BY_TYPE, _BY_FINGERPRINT, _HISTORY = _load()


def schema_versions() -> dict[str, dict[int, dict[str, Any]]]:
    """Every released writer schema: ``{record name: {version: schema JSON}}``."""
    return {name: dict(versions) for name, versions in _HISTORY.items()}


def current_schema(name: str) -> dict[str, Any]:
    """Today's schema of record ``name`` as JSON (what ``encode`` writes)."""
    return next(c.raw for c in _BY_TYPE.values() if c.name == name)


# ------------------------------------------------------------ wire format


class WireFormat:
    """How one process frames the records it writes, and the schema registry it reads Confluent ids from.

    Built from the process's ``Settings`` (``wire_format``, ``schema_registry_url``)
    and handed to every component that reads or writes topics; ``SINGLE_OBJECT``
    (no registry) is the default and what local tables use. ``decode`` reads
    both framings whatever this one writes; a Confluent-framed record needs a
    registry. Thread-safe.
    """

    __slots__ = ("confluent", "registry", "_ids", "_writers", "_lock")

    def __init__(self, confluent: bool = False, registry: SchemaRegistry | None = None) -> None:
        if confluent and registry is None:
            raise ValueError("wire_format=confluent needs schema_registry_url (TASKSTREAM_SCHEMA_REGISTRY_URL)")
        self.confluent = confluent
        self.registry = registry
        self._ids: dict[str, int] = {}  # record name -> schema id we write
        self._writers: dict[int, _Writer] = {}  # schema id -> how to read it
        self._lock = threading.Lock()

    @classmethod
    def of(cls, settings: Settings, *, registry: SchemaRegistry | None = None) -> WireFormat:
        """The wire format ``settings`` name; ``registry`` overrides the one built from ``schema_registry_url``.

        Raises ``ValueError`` for ``wire_format=confluent`` without a registry.
        """
        if registry is None and settings.schema_registry_url:
            from .registry import SchemaRegistry

            registry = SchemaRegistry.from_settings(settings)
        return cls(settings.wire_format == "confluent", registry)

    def encode(self, value: Any) -> bytes:
        """Encode an event, ready message or state in this wire format.

        In the Confluent format the first record of each type registers today's
        schema (``BrokerUnavailable`` if the registry cannot be reached).
        """
        codec = _BY_TYPE[type(value)]
        buf = io.BytesIO()
        buf.write(self._confluent_header(codec) if self.confluent else codec.header)
        fastavro.schemaless_writer(buf, codec.schema, {f: getattr(value, f) for f in codec.fields})
        return buf.getvalue()

    def decode(self, data: bytes | None) -> Any:
        """Decode a single-object or Confluent-framed Avro record into today's dataclass.

        A record written with any released schema version is resolved to
        today's schema, then upcast; ``DecodeError`` on anything else.
        """
        if not data or len(data) < 5:
            raise DecodeError("not Avro single-object encoding (missing C3 01 marker)")
        if data[:1] == CONFLUENT_MAGIC:
            return _read(self._confluent_writer(int.from_bytes(data[1:5], "big")), data, 5)
        if data[:2] != MAGIC or len(data) < 10:
            raise DecodeError("not Avro single-object encoding (missing C3 01 marker)")
        writer = _BY_FINGERPRINT.get(bytes(data[2:10]))
        if writer is None:
            raise DecodeError(f"unknown schema fingerprint {bytes(data[2:10]).hex()}")
        return _read(writer, data, 10)

    def decode_as(self, data: bytes | None, *types: type) -> Any:
        """``decode``, and ``DecodeError`` unless the value is one of ``types`` (what a topic may hold)."""
        value = self.decode(data)
        if not isinstance(value, types):
            raise DecodeError(f"expected {' or '.join(t.__name__ for t in types)}, got {type(value).__name__}")
        return value

    def writer_version(self, data: bytes) -> int | None:
        """The released schema version a record was written with (``None``: not one we know)."""
        if data[:2] == MAGIC:
            writer = _BY_FINGERPRINT.get(bytes(data[2:10]))
            return None if writer is None else writer.version
        if data[:1] == CONFLUENT_MAGIC:
            writer = self._writers.get(int.from_bytes(data[1:5], "big"))
            return None if writer is None or writer.version == 0 else writer.version
        return None

    def _confluent_header(self, codec: _Codec) -> bytes:
        schema_id = self._ids.get(codec.name)
        if schema_id is None:
            assert self.registry is not None
            schema_id = self.registry.register(subject(codec.name), codec.raw)
            with self._lock:
                self._ids[codec.name] = schema_id
                self._writers[schema_id] = _BY_FINGERPRINT[codec.header[2:]]
        return CONFLUENT_MAGIC + schema_id.to_bytes(4, "big")

    def _confluent_writer(self, schema_id: int) -> _Writer:
        writer = self._writers.get(schema_id)
        if writer is not None:
            return writer
        if self.registry is None:
            raise DecodeError(
                f"no C3 01 marker; Confluent-framed record with schema id {schema_id} but no schema registry "
                "configured (TASKSTREAM_SCHEMA_REGISTRY_URL)"
            )
        raw = self.registry.schema(schema_id)  # DecodeError if unknown, BrokerUnavailable if unreachable
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
        with self._lock:
            self._writers[schema_id] = writer
        return writer


#: Single-object framing, no registry: the default, and the format of local tables.
SINGLE_OBJECT = WireFormat()


def subject(name: str) -> str:
    """Registry subject of record ``name``: the record's full name (RecordNameStrategy).

    One topic holds many record types (``<p>.events`` has 17), so the
    per-topic subject ``<topic>-value`` would reject the second type as an
    incompatible version; a subject per record type keeps each type's own
    evolution checked by the registry.
    """
    return f"{NAMESPACE}.{name}"


_new = object.__new__
_set = object.__setattr__


def _build(codec: _Codec, record: dict[str, Any]) -> Any:
    """The dataclass of a decoded record, built without its ``__init__``.

    fastavro returns exactly the reader schema's fields (the import-time check
    makes them the dataclass's fields, and derived ones, which are properties
    and not read back), so the generated frozen ``__init__``
    (one ``object.__setattr__`` call per field plus defaults) would only cost
    time: this is ~5x cheaper and the decode is the fold's hot spot. A field
    missing from an upcaster's output is still a DecodeError (KeyError).
    """
    value: Any = _new(codec.cls)
    for name in codec.attrs:
        _set(value, name, record[name])
    return value


def _read(writer: _Writer, data: bytes, start: int) -> Any:
    """The value of ``data``'s body (from ``start``), written with ``writer``'s schema."""
    codec = writer.codec
    body = io.BytesIO(data[start:])
    try:
        if writer.current:
            record = cast(dict[str, Any], fastavro.schemaless_reader(body, codec.schema, None))  # a record schema
        else:
            record = cast(dict[str, Any], fastavro.schemaless_reader(body, writer.schema, codec.schema))
            for version in range(writer.version, codec.version):
                if (upcast := _UPCASTERS.get((codec.name, version))) is not None:
                    record = upcast(record)
        value = _build(codec, record)
    except Exception as exc:  # fastavro raises many types on corrupt input
        raise DecodeError(f"corrupt {codec.name} record: {exc}") from exc
    if body.tell() != len(data) - start:
        raise DecodeError(f"corrupt {codec.name} record: {len(data) - start - body.tell()} bytes after the body")
    return value


def encode(value: Any) -> bytes:
    """``SINGLE_OBJECT.encode``: a component that writes topics uses its process's ``WireFormat`` instead."""
    return SINGLE_OBJECT.encode(value)


def decode(data: bytes | None) -> Any:
    """``SINGLE_OBJECT.decode`` (reads single-object records, and Confluent ones only with a registry)."""
    return SINGLE_OBJECT.decode(data)


def writer_version(data: bytes) -> int | None:
    """``SINGLE_OBJECT.writer_version``."""
    return SINGLE_OBJECT.writer_version(data)


def type_name(value: Any) -> str:
    return _BY_TYPE[type(value)].name


#: Record headers as a list, typed as the Kafka clients take them (header values may be str, bytes or None).
RecordHeaders = list[tuple[str, str | bytes | None]]


def headers(value: Any) -> RecordHeaders:
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
