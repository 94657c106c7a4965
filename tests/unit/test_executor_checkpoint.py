"""``ctx.last_checkpoint`` decoding and ``ctx.checkpoint`` outside an executor (no broker)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from taskstream.executors import TaskContext
from taskstream.executors._attempt import _decode_checkpoint
from taskstream.executors.context import MAX_CHECKPOINT_BYTES
from taskstream.schemas import ReadyTask


def ready(last_checkpoint: str | None) -> ReadyTask:
    return ReadyTask(task_id="t1", occurred_at=datetime.now(UTC), producer="test", attempt=2,
                     handler="noop", priority="medium", payload="null", last_checkpoint=last_checkpoint)


@pytest.mark.parametrize("text, value", [
    ('{"rows": 10}', {"rows": 10}),
    ("[1, 2]", [1, 2]),
    ('"a string"', "a string"),
    ("0", 0),
    ("null", None),
])
def test_json_checkpoints_decode(text, value):
    assert _decode_checkpoint(ready(text)) == value


def test_absent_checkpoint_is_none_without_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert _decode_checkpoint(ready(None)) is None
    assert caplog.records == []


def test_garbled_checkpoint_is_none_and_logged(caplog):
    with caplog.at_level(logging.WARNING):
        assert _decode_checkpoint(ready("{nope")) is None
    [record] = caplog.records
    assert "t1" in record.getMessage() and "not JSON" in record.getMessage()


def test_context_without_an_executor_refuses_checkpoints():
    ctx = TaskContext(task_id="t", attempt=1, handler="h", priority="low")
    assert ctx.last_checkpoint is None
    with pytest.raises(RuntimeError, match="not attached"):
        ctx.checkpoint({"a": 1})


def test_limit_is_256_kib():
    assert MAX_CHECKPOINT_BYTES == 262144
