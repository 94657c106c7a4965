"""Records keyed by an id of their own (schedules, gates, controls, triggers): one marked field, two aliases."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from taskstream.schemas import KeyedEvent, KeyedState, codec
from taskstream.schemas.events import RECORD_TYPES

NOW = datetime(2026, 12, 7, tzinfo=UTC)
KEYED = sorted((t for t in RECORD_TYPES.values() if issubclass(t, (KeyedEvent, KeyedState))), key=lambda t: t.__name__)


def test_every_family_is_keyed() -> None:
    prefixes = {t.__name__.removesuffix("State") for t in KEYED if issubclass(t, KeyedState)}
    assert prefixes == {"Schedule", "Gate", "Control", "Trigger"}
    assert len(KEYED) == 21  # 17 events of the four families and their 4 states


@pytest.mark.parametrize("cls", KEYED, ids=lambda t: t.__name__)
def test_one_field_is_the_key_and_task_id_and_aggregate_id_name_it(cls: type) -> None:
    marked = [f.name for f in dataclasses.fields(cls) if f.metadata.get("aggregate_key")]
    assert len(marked) == 1
    values = {f.name: _sample(f) for f in dataclasses.fields(cls)
              if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    values[marked[0]] = "the-id"
    value = cls(**values)
    assert value.task_id == "the-id"
    if isinstance(value, KeyedEvent):
        assert value.aggregate_id == "the-id"
    assert codec.decode(codec.encode(value)) == value


def _sample(f: dataclasses.Field) -> object:
    kind = str(f.type)
    if "datetime" in kind:
        return NOW
    if kind.startswith("int"):
        return 1
    if kind.startswith("list"):
        return []
    return "x"
