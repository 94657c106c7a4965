"""Edge helpers of the API: RFC 3339 parsing/formatting, cursors, task JSON."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, strategies as st

from taskstream.api.models import TaskIn, parse_rfc3339, rfc3339, task_json
from taskstream.api.read_model import sortkey
from taskstream.api.routes.tasks import decode_cursor, encode_cursor
from taskstream.schemas import TaskState, ValidationError, initial_state


@pytest.mark.parametrize("text, expected", [
    ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
    ("2024-05-01t12:00:00z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
    ("2024-05-01T14:00:00.5+02:00", datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=UTC)),
    ("2024-05-01 12:00:00-00:30", datetime(2024, 5, 1, 12, 30, tzinfo=UTC)),
])
def test_parse_rfc3339(text: str, expected: datetime) -> None:
    assert parse_rfc3339(text) == expected


@pytest.mark.parametrize("text", ["2024-05-01", "2024-05-01T12:00:00", "tomorrow", "2024-13-01T00:00:00Z", "", "20240501T120000Z"])
def test_parse_rfc3339_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(text)


@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 1, 1), timezones=st.just(UTC)))
def test_rfc3339_round_trips(value: datetime) -> None:
    text = rfc3339(value)
    assert text.endswith("Z")
    assert parse_rfc3339(text) == value


def test_rfc3339_normalises_to_utc() -> None:
    assert rfc3339(datetime(2024, 5, 1, 14, tzinfo=timezone(timedelta(hours=2)))) == "2024-05-01T12:00:00.000000Z"
    assert rfc3339(None) is None


@given(st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), min_size=1, max_size=40),
       st.datetimes(min_value=datetime(1970, 1, 1), timezones=st.just(UTC)))
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


def test_task_in_to_event_and_task_json() -> None:
    now = datetime(2024, 5, 1, tzinfo=UTC)
    body = TaskIn.model_validate({"handler": "h", "payload": [1, {"a": None}], "retry": {"max_attempts": 7},
                                  "timeout_s": 2, "labels": {"k": "v"}})
    ev = body.to_event(task_id="t1", producer="api-x-1", now=now, default_max_attempts=3)
    assert ev.payload == '[1,{"a":null}]' and ev.max_attempts == 7 and ev.timeout_s == 2.0 and ev.run_at is None
    js = task_json(initial_state(ev))
    assert js["payload"] == [1, {"a": None}] and js["created_at"] == "2024-05-01T00:00:00.000000Z"
    assert js["status"] == "pending" and js["version"] == 1 and js["result"] is None
    assert TaskIn.model_validate({"handler": "h"}).to_event(
        task_id="t2", producer="p", now=now, default_max_attempts=3).max_attempts == 3
