"""The one seam between taskstream's values and bytes.

Kafka messages carry Avro single-object encoding (``C3 01``, the 8-byte
CRC-64-AVRO fingerprint of the writer schema, then the Avro binary body), so
any reader holding ``schemas/avro`` decodes a message without a registry.
The record name also travels in the ``event-type`` header, for people
looking at topics with kcat or rpk. JSON (orjson) is used only for payloads
and results, which are JSON documents carried as text inside the records,
and at the HTTP edge.

``encode(value) -> bytes`` and ``decode(bytes) -> value`` are the contract;
anything that cannot be decoded raises ``DecodeError`` and nothing else.
"""

from __future__ import annotations

import dataclasses
import io
import json
from importlib import resources
from typing import Any

import fastavro
import orjson
from fastavro.schema import fingerprint, to_parsing_canonical_form

from .errors import DecodeError
from .events import RECORD_TYPES

MAGIC = b"\xc3\x01"
EVENT_TYPE_HEADER = "event-type"


@dataclasses.dataclass(frozen=True, slots=True)
class _Codec:
    name: str
    cls: type
    schema: Any
    header: bytes
    fields: tuple[str, ...]


def _load() -> tuple[dict[type, _Codec], dict[bytes, _Codec]]:
    by_type: dict[type, _Codec] = {}
    by_fp: dict[bytes, _Codec] = {}
    folder = resources.files(__package__) / "avro"
    for name, cls in RECORD_TYPES.items():
        raw = json.loads((folder / f"{name}.avsc").read_text())
        parsed = fastavro.parse_schema(raw)
        fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
        avro_fields = tuple(f["name"] for f in raw["fields"])
        py_fields = {f.name for f in dataclasses.fields(cls)}
        if set(avro_fields) != py_fields:
            raise RuntimeError(f"{name}: dataclass fields {sorted(py_fields)} != schema fields {sorted(avro_fields)}")
        codec = _Codec(name, cls, parsed, MAGIC + fp, avro_fields)
        by_type[cls] = codec
        by_fp[fp] = codec
    return by_type, by_fp


_BY_TYPE, _BY_FINGERPRINT = _load()


def encode(value: Any) -> bytes:
    """Encode an event, ready message or state as single-object Avro."""
    codec = _BY_TYPE[type(value)]
    buf = io.BytesIO()
    buf.write(codec.header)
    fastavro.schemaless_writer(buf, codec.schema, {f: getattr(value, f) for f in codec.fields})
    return buf.getvalue()


def decode(data: bytes | None) -> Any:
    """Decode single-object Avro into its dataclass; ``DecodeError`` on anything else."""
    if not data or len(data) < 10 or data[:2] != MAGIC:
        raise DecodeError("not Avro single-object encoding (missing C3 01 marker)")
    codec = _BY_FINGERPRINT.get(bytes(data[2:10]))
    if codec is None:
        raise DecodeError(f"unknown schema fingerprint {bytes(data[2:10]).hex()}")
    body = io.BytesIO(data[10:])
    try:
        record = fastavro.schemaless_reader(body, codec.schema, codec.schema)
        value = codec.cls(**record)
    except Exception as exc:  # fastavro raises many types on corrupt input
        raise DecodeError(f"corrupt {codec.name} record: {exc}") from exc
    if body.tell() != len(data) - 10:
        raise DecodeError(f"corrupt {codec.name} record: {len(data) - 10 - body.tell()} bytes after the body")
    return value


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
