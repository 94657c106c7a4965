"""``ctx.upstream`` decoding from ``ReadyTask.upstream``: a bad field never crashes an attempt."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from taskstream.executors import TaskContext
from taskstream.executors._attempt import _decode_upstream
from taskstream.schemas import ReadyTask


def ready(upstream: str) -> ReadyTask:
    return ReadyTask(task_id="t1", occurred_at=datetime.now(UTC), producer="test", attempt=1,
                     handler="noop", priority="medium", payload="null", upstream=upstream)


def test_ids_and_keys_map_to_results_and_none_for_truncated():
    got = _decode_upstream(ready('{"a1": {"n": 1}, "extract": {"n": 1}, "b2": null, "load": null}'))
    assert got == {"a1": {"n": 1}, "extract": {"n": 1}, "b2": None, "load": None}


def test_default_and_empty_field_give_empty_dict():
    assert _decode_upstream(ready("{}")) == {}
    assert _decode_upstream(ready("")) == {}
    assert TaskContext(task_id="t", attempt=1, handler="h", priority="low").upstream == {}


@pytest.mark.parametrize("bad", ["{not json", "[1, 2]", "null", "42", '"text"'])
def test_bad_field_gives_empty_dict_and_a_warning(bad, caplog):
    with caplog.at_level(logging.WARNING, logger="taskstream.executors.runtime"):
        assert _decode_upstream(ready(bad)) == {}
    assert any("upstream" in r.getMessage() and "t1" in r.getMessage() for r in caplog.records)
