"""Pure parts of the API's new routes: murmur2, field names, If-Match, labels, graph checks, idempotency."""

from __future__ import annotations

import pytest

from taskstream.api.idempotency import check_key, derived_id, request_hash
from taskstream.api.models import TaskIn, TaskPatch, WorkflowIn
from taskstream.api.partitioner import murmur2, partition_for
from taskstream.api.problems import field_path
from taskstream.api.reads import parse_labels
from taskstream.api.routes.tasks import parse_if_match
from taskstream.schemas import ValidationError
from taskstream.streams.domain import check_workflow, workflow_problems


# Kafka's own test vectors (clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java)
@pytest.mark.parametrize("key, expected", [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
])
def test_murmur2_matches_kafka(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


def test_partition_for_is_in_range_and_positive() -> None:
    for i in range(2000):
        assert 0 <= partition_for(f"k{i}".encode(), 7) < 7
    assert partition_for(b"", 3) == (murmur2(b"") & 0x7FFFFFFF) % 3


@pytest.mark.parametrize("loc, field", [
    (("body", "tasks", 3, "retry", "max_attempts"), "tasks[3].retry.max_attempts"),
    (("body", "depends_on", 0), "depends_on[0]"),
    (("body", "labels", "a"), "labels.a"),
    (("body",), "body"),
    (("query", "limit"), "limit"),
])
def test_field_names(loc, field) -> None:
    assert field_path(loc) == field


@pytest.mark.parametrize(
    "value, expected", [(None, None), ("*", None), ("3", 3), ('"3"', 3), ('W/"12"', 12), (" 4 ", 4)]
)
def test_if_match(value, expected) -> None:
    assert parse_if_match(value) == expected


@pytest.mark.parametrize("value", ["", "x", '"x"', "-1", "1.5", '"', "٣"])
def test_bad_if_match(value) -> None:
    with pytest.raises(ValidationError) as info:
        parse_if_match(value)
    assert info.value.field == "If-Match"


def test_labels() -> None:
    assert parse_labels(["a:b", "c:d:e", "x:"]) == {"a": "b", "c": "d:e", "x": ""}
    assert parse_labels(["a:b", "a:b"]) == {"a": "b"}
    assert parse_labels(["a:b", "a:c"]) == {"a": "\x00never"}
    for bad in ("ab", ":b"):
        with pytest.raises(ValidationError):
            parse_labels([bad])


def wf(*tasks) -> WorkflowIn:
    return WorkflowIn.model_validate({"tasks": [{"handler": "h", **t} for t in tasks]})


def graph(*tasks) -> list[tuple[str, list[str]]]:
    return [(t.key, t.depends_on) for t in wf(*tasks).tasks]


def test_workflow_problems_name_every_bad_key_and_the_cycle() -> None:
    assert workflow_problems(graph({"key": "a"}, {"key": "b", "depends_on": ["a", "a"]})) == []
    assert wf({"key": "a"}, {"key": "b", "depends_on": ["a", "a"]}).tasks[1].depends_on == ["a"]
    [(field, message)] = workflow_problems(graph({"key": "a"}, {"key": "a"}))
    assert field == "tasks[1].key" and "tasks[0]" in message
    [(field, message)] = workflow_problems(graph({"key": "a", "depends_on": ["zz"]}))
    assert field == "tasks[0].depends_on[0]" and "'zz'" in message
    [(field, message)] = workflow_problems(
        graph({"key": "a", "depends_on": ["b"]}, {"key": "b", "depends_on": ["a"]}, {"key": "c"}))
    assert field == "tasks[0].depends_on" or field == "tasks[1].depends_on"
    assert "cycle" in message and "'a'" in message and "'b'" in message and "'c'" not in message


def test_check_workflow_raises_one_error_naming_every_problem() -> None:
    check_workflow(graph({"key": "a"}, {"key": "b", "depends_on": ["a"]}))  # a DAG: nothing raised
    with pytest.raises(ValidationError) as caught:
        check_workflow(graph({"key": "a"}, {"key": "a"}, {"key": "c", "depends_on": ["x"]}))
    assert [f for f, _ in caught.value.violations] == ["tasks[1].key", "tasks[2].depends_on[0]"]
    assert caught.value.field == "tasks[1].key" and "tasks[2].depends_on[0]: unknown key 'x'" in str(caught.value)


def test_idempotency_helpers() -> None:
    assert derived_id("k") == derived_id("k") != derived_id("k:0") and len(derived_id("k")) == 32
    a = TaskIn.model_validate({"handler": "h", "payload": {"x": 1, "y": 2}})
    b = TaskIn.model_validate({"payload": {"y": 2, "x": 1}, "handler": "h", "priority": "medium"})
    assert request_hash("tasks", a.model_dump(mode="json")) == request_hash("tasks", b.model_dump(mode="json"))
    assert request_hash("tasks", a.model_dump(mode="json")) != request_hash("tasks:batch", a.model_dump(mode="json"))
    assert check_key("abc") == "abc" and check_key(None) is None
    for bad in ("", " ", "x" * 256, "a\nb"):
        with pytest.raises(ValidationError):
            check_key(bad)


def test_patch_to_command_sets_only_given_fields() -> None:
    p = TaskPatch.model_validate({"payload": None})
    p.check()
    c = p.to_command(task_id="t", producer="p", expected_version=3)
    assert c.changes == {"payload": "null"} and c.expected_version == 3
    c = TaskPatch.model_validate({"priority": "high", "timeout_s": 2}).to_command(
        task_id="t", producer="p", expected_version=None)
    assert c.changes == {"priority": "high", "timeout_s": 2.0} and c.expected_version is None
    with pytest.raises(ValidationError):
        TaskPatch.model_validate({}).check()
