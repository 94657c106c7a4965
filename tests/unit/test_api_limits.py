"""Request limits without a broker: ``limits.check_json``, the field limits of the request models, RFC 3339 bounds,
the problem answers they become, and the OpenAPI document that lists those answers."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from fastapi.exceptions import RequestValidationError
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError as PydanticValidationError

from taskstream.api import create_app
from taskstream.api.models import ScheduleIn, TaskIn, TaskPatch, WorkflowIn, parse_rfc3339
from taskstream.api.problems import _request_validation, field_path
from taskstream.schemas import Settings
from taskstream.schemas.limits import (
    MAX_JSON_DEPTH,
    MAX_JSON_INT,
    MAX_LABEL_KEY_CHARS,
    MAX_LABELS,
    MAX_NAME_CHARS,
    MAX_PAYLOAD_BYTES,
    MAX_TIME,
    MAX_TIMEOUT_S,
    MIN_JSON_INT,
    MIN_TIME,
    JsonLimitError,
    check_json,
)


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


# --------------------------------------------------------------- check_json


@pytest.mark.parametrize("value", [
    None, True, 0, MAX_JSON_INT, MIN_JSON_INT, 1.5, -0.0, 1.7976931348623157e308, "", "\U0001f600 ok",
    {"a": [1, {"b": None}]}, nested(MAX_JSON_DEPTH), {"k" * 10_000: "v" * 10_000},
])
def test_check_json_accepts_json_every_reader_takes(value) -> None:
    check_json(value)


@pytest.mark.parametrize("value, path, words", [
    ({"n": MAX_JSON_INT + 1}, ".n", "integer out of range"),
    ([0, MIN_JSON_INT - 1], "[1]", "integer out of range"),
    ({"a": [1, {"b": float("nan")}]}, ".a[1].b", "finite"),
    ({"x": float("inf")}, ".x", "finite"),
    (float("-inf"), "", "finite"),
    ({"s": "a\ud800b"}, ".s", "surrogate"),
    ({"a": {"\udfff": 1}}, ".a", "key"),
    ({1: "x"}, "", "key is not a string"),
    ({"t": (1, 2)}, ".t", "not a JSON value"),
    ({"o": object()}, ".o", "not a JSON value"),
    (nested(MAX_JSON_DEPTH + 1), "[0]" * MAX_JSON_DEPTH, f"deeper than {MAX_JSON_DEPTH}"),
    ({"k" * 100: float("nan")}, "." + "k" * 61 + "...", "finite"),
])
def test_check_json_names_the_path_of_what_it_refuses(value, path: str, words: str) -> None:
    with pytest.raises(JsonLimitError) as info:
        check_json(value)
    assert info.value.path == path
    assert words in info.value.reason


def test_check_json_is_iterative() -> None:
    with pytest.raises(JsonLimitError):
        check_json(nested(100_000))  # a recursive walk would hit the recursion limit first


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(MIN_JSON_INT, MAX_JSON_INT)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=20,
    )
)
def test_check_json_accepts_what_json_round_trips(value) -> None:
    check_json(value)
    assert json.loads(json.dumps(value)) == value


# ---------------------------------------------------------------- models


def errors(model, body: dict) -> list[dict]:
    with pytest.raises(PydanticValidationError) as info:
        model.model_validate(body)
    return info.value.errors()


def test_payload_over_the_limit_is_too_large_and_at_it_is_taken() -> None:
    TaskIn.model_validate({"handler": "h", "payload": "z" * (MAX_PAYLOAD_BYTES - 2)})
    [e] = errors(TaskIn, {"handler": "h", "payload": "z" * (MAX_PAYLOAD_BYTES - 1)})
    assert e["type"] == "too_large" and e["loc"] == ("payload",) and e["ctx"]["size"] == MAX_PAYLOAD_BYTES + 1
    [e] = errors(TaskPatch, {"payload": ["z" * MAX_PAYLOAD_BYTES]})
    assert e["type"] == "too_large"
    [e] = errors(ScheduleIn, {"cron": "* * * * *", "task": {"handler": "h", "payload": "z" * MAX_PAYLOAD_BYTES}})
    assert e["type"] == "too_large" and e["loc"] == ("task", "payload")


def test_payload_values_are_checked_with_their_path() -> None:
    [e] = errors(TaskIn, {"handler": "h", "payload": {"a": [0, 2**64]}})
    assert e["type"] == "json_value" and e["loc"] == ("payload",) and e["ctx"]["json_path"] == ".a[1]"
    [e] = errors(WorkflowIn, {"tasks": [{"handler": "h", "key": "a", "payload": {"x": float("nan")}}]})
    assert e["loc"] == ("tasks", 0, "payload") and e["ctx"]["json_path"] == ".x"


@pytest.mark.parametrize("fields, loc", [
    ({"name": "n" * (MAX_NAME_CHARS + 1)}, ("name",)),
    ({"name": "a\x00b"}, ("name",)),
    ({"handler": "h" * 201}, ("handler",)),
    ({"handler": "a\nb"}, ("handler",)),
    ({"labels": {f"k{i}": "v" for i in range(MAX_LABELS + 1)}}, ("labels",)),
    ({"labels": {"a:b": "v"}}, ("labels", "a:b", "[key]")),
    ({"labels": {".a": "v"}}, ("labels", ".a", "[key]")),
    ({"labels": {"k" * (MAX_LABEL_KEY_CHARS + 1): "v"}}, ("labels", "k" * (MAX_LABEL_KEY_CHARS + 1), "[key]")),
    ({"labels": {"k": "v" * 257}}, ("labels", "k")),
    ({"labels": {"k": "a\tb"}}, ("labels", "k")),
    ({"depends_on": ["i" * 65]}, ("depends_on", 0)),
    ({"timeout_s": float("inf")}, ("timeout_s",)),
    ({"timeout_s": float("nan")}, ("timeout_s",)),
    ({"timeout_s": MAX_TIMEOUT_S + 1}, ("timeout_s",)),
    ({"run_at": "0001-01-01T00:00:00+01:00"}, ("run_at",)),
])
def test_task_field_limits(fields: dict, loc: tuple) -> None:
    assert loc in [e["loc"] for e in errors(TaskIn, {"handler": "h", **fields})]


def test_task_fields_at_their_limits_are_taken() -> None:
    task = TaskIn.model_validate(
        {
            "handler": "h" * 200,
            "name": "n" * MAX_NAME_CHARS,
            "timeout_s": MAX_TIMEOUT_S,
            "run_at": "9000-01-01T00:00:00Z",
            "labels": {f"a.b/c-d_{i}": "v" * 256 for i in range(MAX_LABELS)},
            "depends_on": ["i" * 64],
        }
    )
    assert len(task.labels) == MAX_LABELS


@pytest.mark.parametrize("text", [
    "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "1969-12-31T23:59:59Z", "9000-01-01T00:00:00.000001Z",
    "2024-05-01T12:00:00Z" + " " * 100,
])
def test_parse_rfc3339_refuses_times_out_of_range(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(text)


def test_parse_rfc3339_bounds_are_inclusive() -> None:
    assert parse_rfc3339("1970-01-01T00:00:00Z") == MIN_TIME
    assert parse_rfc3339("9000-01-01T01:00:00+01:00") == MAX_TIME == datetime(9000, 1, 1, tzinfo=UTC)


# -------------------------------------------------------------- problems


@pytest.mark.parametrize("loc, field", [
    (("body", "labels", "a:b", "[key]"), "labels.a:b"),
    (("body", "\ud800"), "\\ud800"),
    (("body", ""), '""'),
    (("body", "x" * 100), "x" * 61 + "..."),
])
def test_client_given_parts_of_field_names_are_safe(loc: tuple, field: str) -> None:
    assert field_path(loc) == field
    field_path(loc).encode("utf-8")


def problem_of(errors: list[dict]) -> dict:
    response = asyncio.run(_request_validation(None, RequestValidationError(errors)))
    return {"status": response.status_code, **json.loads(response.body)}


def test_too_large_alone_is_413_with_the_json_path_in_the_field() -> None:
    too_large = {"type": "too_large", "loc": ("body", "tasks", 3, "payload"), "msg": "300000 bytes", "ctx": {}}
    p = problem_of([too_large])
    assert p["status"] == 413 and p["type"] == "urn:taskstream:problem:too-large"
    assert p["errors"] == [{"field": "tasks[3].payload", "message": "300000 bytes"}]
    bad_value = {"type": "json_value", "loc": ("body", "payload"), "msg": "not finite", "ctx": {"json_path": ".a[1]"}}
    p = problem_of([too_large, bad_value])
    assert p["status"] == 422 and [e["field"] for e in p["errors"]] == ["tasks[3].payload", "payload.a[1]"]


def test_openapi_documents_the_problem_answers() -> None:
    doc = create_app(Settings(bootstrap_servers="127.0.0.1:1", prefix="p")).openapi()
    post = doc["paths"]["/api/v1/tasks"]["post"]["responses"]
    assert {"202", "400", "413", "422", "503"} <= set(post)
    assert "application/problem+json" in post["422"]["content"]
    patch = doc["paths"]["/api/v1/tasks/{task_id}"]["patch"]["responses"]
    assert {"202", "400", "404", "409", "412", "413", "422", "503"} <= set(patch)
    assert doc["paths"]["/healthz"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] == {
        "type": "object"}
    assert "HTTPValidationError" not in doc["components"]["schemas"]
