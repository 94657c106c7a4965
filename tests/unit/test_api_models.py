"""Edge helpers of the API: RFC 3339 parsing/formatting, cursors, task JSON."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError as PydanticValidationError

from taskstream.api.models import LimitIn, TaskIn, TaskPatch, TriggerIn, parse_rfc3339, rfc3339, task_json
from taskstream.api.read_model import sortkey
from taskstream.api.reads import decode_cursor, encode_cursor
from taskstream.schemas import MAX_BACKOFF_S, Settings, TaskState, ValidationError
from taskstream.streams.domain import decide, fold, initial_state


@pytest.mark.parametrize("text, expected", [
    ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
    ("2024-05-01t12:00:00z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
    ("2024-05-01T14:00:00.5+02:00", datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=UTC)),
    ("2024-05-01 12:00:00-00:30", datetime(2024, 5, 1, 12, 30, tzinfo=UTC)),
])
def test_parse_rfc3339(text: str, expected: datetime) -> None:
    assert parse_rfc3339(text) == expected


@pytest.mark.parametrize(
    "text", ["2024-05-01", "2024-05-01T12:00:00", "tomorrow", "2024-13-01T00:00:00Z", "", "20240501T120000Z"]
)
def test_parse_rfc3339_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(text)


@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9000, 1, 1), timezones=st.just(UTC)))
def test_rfc3339_round_trips(value: datetime) -> None:
    text = rfc3339(value)
    assert text.endswith("Z")
    assert parse_rfc3339(text) == value


def test_rfc3339_normalises_to_utc() -> None:
    assert rfc3339(datetime(2024, 5, 1, 14, tzinfo=timezone(timedelta(hours=2)))) == "2024-05-01T12:00:00.000000Z"
    assert rfc3339(None) is None


@given(
    st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), min_size=1, max_size=40),
    st.datetimes(min_value=datetime(1970, 1, 1), timezones=st.just(UTC)),
)
def test_cursor_round_trips(task_id: str, created: datetime) -> None:
    s = TaskState(task_id=task_id, handler="h", status="pending", priority="low", payload="{}",
                  created_at=created, updated_at=created)
    key = sortkey(s)
    assert decode_cursor(encode_cursor(key)) == key


@pytest.mark.parametrize("cursor", ["", "!!!", "Zm9v", encode_cursor(b"12:abc")])
def test_bad_cursor(cursor: str) -> None:
    with pytest.raises(ValidationError) as info:
        decode_cursor(cursor)
    assert info.value.field == "cursor"


SETTINGS = Settings(default_max_attempts=3, default_backoff_initial_s=1.5, default_backoff_multiplier=3,
                    default_backoff_max_s=60, default_backoff_jitter=0.25)


def created(body: TaskIn, *, task_id: str, producer: str, now: datetime):
    """The TaskCreated the domain decides for the body's SubmitTask."""
    (event,) = decide(None, body.to_command(task_id=task_id, producer=producer, settings=SETTINGS), now)
    return event


def test_task_in_to_command_and_task_json() -> None:
    now = datetime(2024, 5, 1, tzinfo=UTC)
    body = TaskIn.model_validate({"handler": "h", "payload": [1, {"a": None}], "retry": {"max_attempts": 7},
                                  "timeout_s": 2, "labels": {"k": "v"}})
    ev = created(body, task_id="t1", producer="api-x-1", now=now)
    assert ev.payload == '[1,{"a":null}]' and ev.max_attempts == 7 and ev.timeout_s == 2.0 and ev.run_at is None
    js = task_json(initial_state(ev))
    assert js["payload"] == [1, {"a": None}] and js["created_at"] == "2024-05-01T00:00:00.000000Z"
    assert js["status"] == "pending" and js["version"] == 1 and js["result"] is None
    assert created(TaskIn.model_validate({"handler": "h"}), task_id="t2", producer="p", now=now).max_attempts == 3


def test_every_task_created_carries_the_complete_retry_policy() -> None:
    now = datetime(2024, 5, 1, tzinfo=UTC)
    ev = created(TaskIn.model_validate({"handler": "h"}), task_id="t", producer="p", now=now)
    assert (ev.max_attempts, ev.backoff_initial_s, ev.backoff_multiplier, ev.backoff_max_s, ev.backoff_jitter) == (
        3, 1.5, 3.0, 60.0, 0.25)
    ev = created(
        TaskIn.model_validate({"handler": "h", "retry": {"backoff": {"initial_s": 0, "jitter": 1}}}),
        task_id="t",
        producer="p",
        now=now,
    )
    assert (ev.max_attempts, ev.backoff_initial_s, ev.backoff_multiplier, ev.backoff_max_s, ev.backoff_jitter) == (
        3, 0.0, 3.0, 60.0, 1.0)
    assert all(isinstance(getattr(ev, f"backoff_{n}"), float) for n in ("initial_s", "multiplier", "max_s", "jitter"))
    js = task_json(initial_state(ev))
    assert js["retry"] == {
        "max_attempts": 3,
        "backoff": {"initial_s": 0.0, "multiplier": 3.0, "max_s": 60.0, "jitter": 1.0},
    }
    assert js["max_attempts"] == 3 and js["retry_at"] is None and js["checkpoint"] is None
    assert js["schedule_id"] is None and js["scheduled_for"] is None


def test_task_json_shows_retry_at_checkpoint_and_schedule() -> None:
    at = datetime(2024, 5, 1, 12, tzinfo=UTC)
    s = TaskState(task_id="t", handler="h", status="scheduled", priority="low", payload="{}", created_at=at,
                  updated_at=at, retry_at=at, checkpoint='{"done": 10}', schedule_id="s1", scheduled_for=at, attempt=2)
    js = task_json(s)
    assert js["retry_at"] == js["scheduled_for"] == "2024-05-01T12:00:00.000000Z"
    assert js["checkpoint"] == {"done": 10} and js["schedule_id"] == "s1"
    assert js["retry"]["backoff"] == {"initial_s": None, "multiplier": None, "max_s": None, "jitter": None}


@pytest.mark.parametrize("retry, field", [
    ({"backoff": {"initial_s": -0.5}}, "initial_s"),
    ({"backoff": {"multiplier": 0.99}}, "multiplier"),
    ({"backoff": {"max_s": 0}}, "max_s"),
    ({"backoff": {"max_s": MAX_BACKOFF_S * 2}}, "max_s"),
    ({"backoff": {"jitter": 1.01}}, "jitter"),
    ({"backoff": {"jitter": True}}, "jitter"),
    ({"backoff": {"initial_s": float("nan")}}, "initial_s"),
    ({"backoff": {"max_s": float("inf")}}, "max_s"),
])
def test_bad_backoff_names_the_field(retry: dict, field: str) -> None:
    with pytest.raises(PydanticValidationError) as info:
        TaskIn.model_validate({"handler": "h", "retry": retry})
    assert [e["loc"] for e in info.value.errors()] == [("retry", "backoff", field)]


def test_backoff_bounds_are_inclusive_where_documented() -> None:
    TaskIn.model_validate({"handler": "h", "retry": {"backoff": {
        "initial_s": 0, "multiplier": 1, "max_s": MAX_BACKOFF_S, "jitter": 0}}})
    TaskIn.model_validate({"handler": "h", "retry": {"backoff": {"jitter": 1}}})


def test_patch_with_backoff_sets_only_the_given_backoff_fields() -> None:
    p = TaskPatch.model_validate({"retry": {"backoff": {"max_s": 10}}})
    p.check()
    c = p.to_command(task_id="t", producer="p", expected_version=1)
    assert c.changes == {"backoff_max_s": 10.0}
    for body, field in (({"retry": {}}, "retry"), ({"retry": {"backoff": {}}}, "retry.backoff")):
        with pytest.raises(ValidationError) as info:
            TaskPatch.model_validate(body).check()
        assert info.value.field == field


# --------------------------------------------------------------------- concurrency keys (issue 28)

T_NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def test_a_task_s_concurrency_key_template_is_filled_from_its_payload_and_shown_back():
    body = TaskIn.model_validate({"handler": "h", "payload": {"customer_id": 42},
                                  "concurrency": {"key": "customer-{payload.customer_id}", "limit": 3}})
    (event,) = decide(None, body.to_command(task_id="t", producer="api", settings=SETTINGS), T_NOW)
    assert (event.concurrency_key, event.concurrency_limit) == ("customer-42", 3)
    shown = task_json(fold([event]))
    assert shown["concurrency"] == {"key": "customer-42", "limit": 3} and shown["waiting_for"] is None
    plain = TaskIn.model_validate({"handler": "h"})
    (event,) = decide(None, plain.to_command(task_id="t", producer="api", settings=SETTINGS), T_NOW)
    assert task_json(fold([event]))["concurrency"] is None


@pytest.mark.parametrize("concurrency", [
    {"limit": 2}, {"key": "", "limit": 2}, {"key": "k", "limit": 0}, {"key": "k", "limit": "2"},
    {"key": "k", "limit": 2, "extra": 1}, {"key": "k" * 300, "limit": 2},
    {"key": "k", "rate": 0, "per_s": 1}, {"key": "k", "rate": 5, "per_s": 0}, {"key": "k", "rate": 5, "per_s": "1"},
    {"key": "k", "rate": 1001, "per_s": 1},
])
def test_a_bad_concurrency_field_is_refused(concurrency):
    with pytest.raises(PydanticValidationError):
        TaskIn.model_validate({"handler": "h", "concurrency": concurrency})


@pytest.mark.parametrize(("concurrency", "field"), [
    ({"key": "k"}, "concurrency.limit"),
    ({"key": "k", "rate": 5}, "concurrency.per_s"),
    ({"key": "k", "per_s": 1}, "concurrency.rate"),
])
def test_a_key_without_a_limit_or_a_whole_rate_is_refused_by_the_decider_naming_the_field(concurrency, field):
    body = TaskIn.model_validate({"handler": "h", "concurrency": concurrency})
    with pytest.raises(ValidationError) as info:
        decide(None, body.to_command(task_id="t", producer="api", settings=SETTINGS), T_NOW)
    assert info.value.field == field


def test_a_rate_reaches_the_task_and_is_shown_with_it():
    body = TaskIn.model_validate({"handler": "h", "concurrency": {"key": "api", "rate": 5, "per_s": 1}})
    (event,) = decide(None, body.to_command(task_id="t", producer="api", settings=SETTINGS), T_NOW)
    assert (event.concurrency_limit, event.concurrency_rate, event.concurrency_per_s) == (None, 5, 1.0)
    shown = task_json(fold([event]))
    assert shown["concurrency"] == {"key": "api", "limit": None, "rate": 5, "per_s": 1.0}
    assert shown["waiting_for"] is None


def test_a_key_naming_a_field_the_payload_lacks_is_refused_naming_concurrency_key():
    body = TaskIn.model_validate({"handler": "h", "payload": {}, "concurrency": {"key": "{payload.nope}", "limit": 1}})
    with pytest.raises(ValidationError) as info:
        decide(None, body.to_command(task_id="t", producer="api", settings=SETTINGS), T_NOW)
    assert info.value.field == "concurrency.key"


@pytest.mark.parametrize(("body", "field"), [
    ({"per_s": True, "rate": 1}, "per_s"), ({"per_s": "1", "rate": 1}, "per_s"), ({"rate": True, "per_s": 1}, "rate"),
    ({"rate": 1.5, "per_s": 1}, "rate"), ({"limit": True}, "limit"), ({"limit": "2"}, "limit"),
    ({"per_s": float("nan"), "rate": 1}, "per_s"),
])
def test_a_handler_limit_takes_numbers_only_never_bools_or_strings(body: dict, field: str) -> None:
    """Found by the OpenAPI fuzz: ``{"per_s": true, "rate": 1}`` was accepted as a rate of 1 per 1.0 s."""
    with pytest.raises(PydanticValidationError) as info:
        LimitIn.model_validate(body)
    assert [e["loc"][0] for e in info.value.errors()] == [field]


def test_a_handler_limit_takes_an_int_period() -> None:
    assert LimitIn.model_validate({"rate": 5, "per_s": 2}).per_s == 2


@pytest.mark.parametrize("field", ["filter", "start"])
@pytest.mark.parametrize("value", [-(2**63) - 1, 2**64, {"a": 2**64}])
def test_a_trigger_s_json_fields_refuse_integers_beyond_64_bits(field: str, value) -> None:
    """Found by the OpenAPI fuzz: ``"filter": -9223372036854775809`` passed the model and was a 500 when the
    command was encoded."""
    body = {"name": "t", "topic": "t", "task": {"handler": "h"}, field: value}
    with pytest.raises(PydanticValidationError) as info:
        TriggerIn.model_validate(body)
    assert [e["loc"][0] for e in info.value.errors()] == [field]
