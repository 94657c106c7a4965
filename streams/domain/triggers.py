"""The topic trigger aggregate: its fold, its commands, and the task one record of its topic makes (pure).

A trigger is an aggregate of its own, keyed by ``trigger:<name>`` on
``<p>.events`` next to tasks and schedules: ``TriggerCreated`` makes it
``active``, ``TriggerPaused``/``TriggerResumed`` stop and restart its
tasks, ``TriggerDeleted`` ends it for good (a deleted trigger accepts no
command, and its name is never taken again, so a task id derived from the
name never means two triggers). The processor folds these events into a
``TriggerState`` like any other; the trigger runner (``streams.triggers``)
reads the states and, for each record of an active trigger's topic, calls
``record_task`` here for the ``SubmitTask`` it writes. The id of that task
comes from the trigger's name and the record's topic, partition and offset
(``trigger_task_id``), so a record read twice (a crash before the offsets
were committed, a rebalance) makes the same id, and the second
``TaskCreated`` is a duplicate the fold drops: one task per record.

Its rules register with the task's entry points (``evolve``, ``decide``),
which dispatch on the aggregate's state type; nothing here sees a ``TaskState``.
"""

from __future__ import annotations

import base64
import re
import uuid
from dataclasses import replace
from datetime import datetime
from typing import Any

from taskstream.schemas import (
    CommandRejected,
    DecodeError,
    Event,
    TriggerCreated,
    TriggerDeleted,
    TriggerPaused,
    TriggerResumed,
    TriggerState,
    TriggerStatus,
    ValidationError,
    codec,
)
from taskstream.schemas.limits import (
    MAX_LABEL_VALUE_CHARS,
    MAX_PAYLOAD_BYTES,
    MIN_TIME,
    JsonLimitError,
    check_json,
)

from .commands import CreateTrigger, DeleteTrigger, PauseTrigger, ResumeTrigger, SubmitTask
from .decide import _decides, existing
from .evolve import _on
from .ids import UNSET

#: The key prefix of a trigger's events and state: ``trigger:<name>``.
TRIGGER_PREFIX = "trigger:"
TRIGGER_TASK_NAMESPACE = uuid.UUID("0d6f5a7e-2b8c-4c55-9d1e-7a3b8e4f1c22")
#: A trigger's name: letters, digits, ``.``, ``_``, ``-`` (it names the runner's consumer group).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
#: A Kafka topic name (the broker's own rule: at most 249 of these characters, not ``.`` or ``..``).
TOPIC_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
FORMATS = ("json", "bytes")
KEY_AS = ("label", "payload")
STARTS = ("latest", "earliest")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: Fields of a filter (each ``field`` or ``a.b.c`` path must equal its value).
MAX_FILTER_FIELDS = 20
#: What every read shows instead of a secret.
HIDDEN = "***"
#: Labels a trigger's task carries with ``key_as: "label"`` (and ``taskstream.trigger`` always).
LABEL_TOPIC, LABEL_PARTITION, LABEL_OFFSET, LABEL_KEY = "kafka.topic", "kafka.partition", "kafka.offset", "kafka.key"
LABEL_TRIGGER = "taskstream.trigger"


def trigger_id(name: str) -> str:
    """The aggregate id (record key on ``<p>.events`` and ``<p>.state``) of the trigger ``name``."""
    return TRIGGER_PREFIX + name


def trigger_task_id(name: str, topic: str, partition: int, offset: int) -> str:
    """The id of the task the record at ``topic``/``partition``/``offset`` makes for trigger ``name``: the same
    on every read of that record, by any runner."""
    return uuid.uuid5(TRIGGER_TASK_NAMESPACE, f"{name}\x1f{topic}\x1f{partition}\x1f{offset}").hex


# --------------------------------------------------------------------- evolve


@_on(TriggerCreated, TriggerState)
def _created(state: TriggerState | None, e: TriggerCreated) -> TriggerState | None:
    if state is not None:
        return state
    return TriggerState(
        trigger_id=e.trigger_id, name=e.name, topic=e.topic, template=e.template, status=TriggerStatus.ACTIVE.value,
        created_at=e.occurred_at, updated_at=e.occurred_at, filter=e.filter, key_as=e.key_as, start=e.start,
        format=e.format, bootstrap_servers=e.bootstrap_servers, security_protocol=e.security_protocol,
        sasl_mechanism=e.sasl_mechanism, sasl_username=e.sasl_username, sasl_password=e.sasl_password,
        ssl_ca_location=e.ssl_ca_location, created_by=e.actor, version=1,
    )


@_on(TriggerPaused, TriggerState)
def _paused(state: TriggerState | None, e: TriggerPaused) -> TriggerState | None:
    if state is None or state.status != TriggerStatus.ACTIVE.value:
        return state
    return replace(state, status=TriggerStatus.PAUSED.value, updated_at=e.occurred_at, version=state.version + 1)


@_on(TriggerResumed, TriggerState)
def _resumed(state: TriggerState | None, e: TriggerResumed) -> TriggerState | None:
    if state is None or state.status != TriggerStatus.PAUSED.value:
        return state
    return replace(state, status=TriggerStatus.ACTIVE.value, updated_at=e.occurred_at, version=state.version + 1)


@_on(TriggerDeleted, TriggerState)
def _deleted(state: TriggerState | None, e: TriggerDeleted) -> TriggerState | None:
    if state is None or state.status == TriggerStatus.DELETED.value:
        return state
    return replace(state, status=TriggerStatus.DELETED.value, updated_at=e.occurred_at, version=state.version + 1)


# --------------------------------------------------------------------- decide


@_decides(CreateTrigger, TriggerState)
def _create(state: TriggerState | None, c: CreateTrigger, now: datetime) -> list[Event]:
    if state is not None:
        gone = " (deleted: a trigger's name is not taken again)" if state.status == TriggerStatus.DELETED.value else ""
        raise CommandRejected(f"trigger {c.name} already exists{gone}")
    problems = trigger_problems(c)
    if problems:
        raise ValidationError.of(problems)
    return [TriggerCreated(
        event_id=UNSET, trigger_id=trigger_id(c.name), occurred_at=now, producer=c.producer, name=c.name,
        topic=c.topic, template=c.template, filter=c.filter, key_as=c.key_as, start=c.start, format=c.format,
        bootstrap_servers=c.bootstrap_servers, security_protocol=c.security_protocol,
        sasl_mechanism=c.sasl_mechanism, sasl_username=c.sasl_username, sasl_password=c.sasl_password,
        ssl_ca_location=c.ssl_ca_location, actor=c.actor,
    )]


@_decides(PauseTrigger, TriggerState)
def _pause(state: TriggerState | None, c: PauseTrigger, now: datetime) -> list[Event]:
    if existing(state, "trigger", c.name, "paused").status == TriggerStatus.PAUSED.value:
        return []
    return [TriggerPaused(event_id=UNSET, trigger_id=trigger_id(c.name), occurred_at=now, producer=c.producer,
                          reason=c.reason, actor=c.actor)]


@_decides(ResumeTrigger, TriggerState)
def _resume(state: TriggerState | None, c: ResumeTrigger, now: datetime) -> list[Event]:
    if existing(state, "trigger", c.name, "resumed").status == TriggerStatus.ACTIVE.value:
        return []
    return [TriggerResumed(event_id=UNSET, trigger_id=trigger_id(c.name), occurred_at=now, producer=c.producer,
                           actor=c.actor)]


@_decides(DeleteTrigger, TriggerState)
def _delete(state: TriggerState | None, c: DeleteTrigger, now: datetime) -> list[Event]:
    existing(state, "trigger", c.name, "deleted")
    return [TriggerDeleted(event_id=UNSET, trigger_id=trigger_id(c.name), occurred_at=now, producer=c.producer,
                           reason=c.reason, actor=c.actor)]


# --------------------------------------------------------------------- validation


def trigger_problems(c: CreateTrigger) -> list[tuple[str, str]]:
    """Why a trigger cannot be created, as ``(field, message)``; empty for a good one."""
    out: list[tuple[str, str]] = []
    if not NAME_PATTERN.match(c.name):
        out.append(("name", "1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit"))
    if not TOPIC_PATTERN.match(c.topic) or c.topic in (".", ".."):
        out.append(("topic", "not a Kafka topic name: 1 to 249 letters, digits, '.', '_' or '-' (not '.' or '..')"))
    template = _json(c.template)
    if not isinstance(template, dict) or not isinstance(template.get("handler"), str) or not template["handler"]:
        out.append(("task.handler", "the task template needs a handler"))
    if c.format not in FORMATS:
        out.append(("format", f"must be one of {', '.join(FORMATS)} (Avro with a schema registry is not supported)"))
    if c.key_as not in KEY_AS:
        out.append(("key_as", f"must be one of {', '.join(KEY_AS)}"))
    if c.filter is not None:
        out += [("filter", why) for why in _filter_problems(_json(c.filter), c.format)]
    out += [("start", why) for why in _start_problems(_json(c.start))]
    if c.security_protocol is not None and c.security_protocol not in SECURITY_PROTOCOLS:
        out.append(("security_protocol", f"must be one of {', '.join(SECURITY_PROTOCOLS)}"))
    if c.sasl_mechanism is not None and c.sasl_mechanism not in SASL_MECHANISMS:
        out.append(("sasl_mechanism", f"must be one of {', '.join(SASL_MECHANISMS)}"))
    cluster = (c.security_protocol, c.sasl_mechanism, c.sasl_username, c.sasl_password, c.ssl_ca_location)
    if c.bootstrap_servers is None and any(v is not None for v in cluster):
        out.append(("bootstrap_servers", "security settings are for another cluster: name its bootstrap_servers"))
    if c.bootstrap_servers is not None and not c.bootstrap_servers.strip():
        out.append(("bootstrap_servers", "must not be empty"))
    return out


def _json(text: str | None) -> Any:
    try:
        return codec.loads_json(text)
    except codec.JSONDecodeError:
        return _BAD


_BAD = object()


def _filter_problems(f: Any, fmt: str) -> list[str]:
    if fmt == "bytes":
        return ["a bytes trigger cannot filter: its records are not JSON"]
    if not isinstance(f, dict) or not f:
        return ['must be an object of field -> value, e.g. {"type": "order"}']
    if len(f) > MAX_FILTER_FIELDS:
        return [f"at most {MAX_FILTER_FIELDS} fields"]
    bad = [k for k, v in f.items() if not k or any(not part for part in k.split("."))
           or not (v is None or isinstance(v, (str, int, float, bool)))]
    return [f"field {k!r}: a field path (a or a.b) and a JSON string, number, boolean or null" for k in bad]


def _start_problems(s: Any) -> list[str]:
    if s in STARTS:
        return []
    if isinstance(s, dict) and set(s) == {"offset"}:
        offsets = s["offset"]
        if (isinstance(offsets, dict) and offsets
                and all(k.isdigit() and isinstance(v, int) and not isinstance(v, bool) and v >= 0
                        for k, v in offsets.items())):
            return []
        return ['"offset" must map partitions to offsets, e.g. {"offset": {"0": 42}}']
    if isinstance(s, dict) and set(s) == {"time"}:
        t = start_time(s)
        if t is None:
            return ['"time" must be an ISO 8601 date-time with a time zone, e.g. {"time": "2026-01-05T10:00:00Z"}']
        return []
    return ['must be "latest", "earliest", {"offset": {partition: offset}} or {"time": ISO 8601}']


def start_time(start: Any) -> datetime | None:
    """The time of a ``{"time": iso}`` start (aware, not before 1970), else None."""
    if not isinstance(start, dict) or not isinstance(start.get("time"), str):
        return None
    try:
        t = datetime.fromisoformat(start["time"].replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None and t >= MIN_TIME else None


def start_of(state: TriggerState) -> Any:
    """The trigger's ``start`` as a JSON value (``"latest"`` for one the log holds unreadable)."""
    s = _json(state.start)
    return "latest" if s is _BAD else s


# --------------------------------------------------------------------- records


def matches(value: Any, filter_: dict[str, Any]) -> bool:
    """Whether a record's decoded JSON ``value`` (an object) has every field path of ``filter_`` equal to its value.

    Equality is JSON's: ``1`` equals ``1.0`` but not ``true``; a missing field never matches (not even ``null``).
    """
    for path, want in filter_.items():
        got: Any = value
        for part in path.split("."):
            if not isinstance(got, dict) or part not in got:
                return False
            got = got[part]
        if isinstance(got, bool) != isinstance(want, bool) or got != want:
            return False
    return True


def record_task(state: TriggerState, topic: str, partition: int, offset: int, key: bytes | None,
                value: bytes | None, *, producer: str) -> SubmitTask | None:
    """The task one record makes: a ``SubmitTask`` with the id ``trigger_task_id``, or None when the filter
    does not match (the record is done with, no task).

    Raises ``DecodeError`` (the record goes to the dead-letter topic) for a record that is not JSON with
    ``format: json``, whose value is not an object when there is a filter, or whose payload would be larger
    than ``MAX_PAYLOAD_BYTES``. A tombstone (no value) is not an event: None.
    """
    if value is None:
        return None
    decoded: Any
    if state.format == "bytes":
        decoded = {"base64": base64.b64encode(value).decode("ascii")}
    else:
        try:
            decoded = codec.loads_json(value)
            check_json(decoded)
        except (codec.JSONDecodeError, JsonLimitError) as exc:
            raise DecodeError(f"trigger {state.name}: the record's value is not a JSON document: {exc}") from None
    if state.filter is not None:
        f = _json(state.filter)
        if isinstance(f, dict):
            if not isinstance(decoded, dict):
                raise DecodeError(f"trigger {state.name}: the filter needs a JSON object, the record holds "
                                  f"{type(decoded).__name__}")
            if not matches(decoded, f):
                return None
    t = _json(state.template)
    t = t if isinstance(t, dict) else {}
    key_text = None if key is None else key.decode("utf-8", "backslashreplace")
    where = {"topic": topic, "partition": partition, "offset": offset, "key": key_text}
    labels = {str(k): str(v) for k, v in (t.get("labels") or {}).items()}
    labels[LABEL_TRIGGER] = state.name
    if state.key_as == "payload":
        decoded = {"value": decoded, "kafka": where}
    else:
        labels.update({LABEL_TOPIC: topic, LABEL_PARTITION: str(partition), LABEL_OFFSET: str(offset)})
        if key_text is not None:
            labels[LABEL_KEY] = key_text[:MAX_LABEL_VALUE_CHARS]
    payload = codec.dumps_json(decoded)
    if len(payload.encode()) > MAX_PAYLOAD_BYTES:
        raise DecodeError(f"trigger {state.name}: the record's payload is {len(payload.encode()):,} bytes, more than "
                          f"a task takes ({MAX_PAYLOAD_BYTES:,})")

    def num(name: str) -> float | None:
        v = t.get(name)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    max_attempts = t.get("max_attempts")
    return SubmitTask(
        task_id=trigger_task_id(state.name, topic, partition, offset), handler=str(t.get("handler", "")),
        producer=producer, priority=str(t.get("priority", "medium")), payload=payload,
        name=str(t.get("name") or state.name), labels=labels, timeout_s=num("timeout_s"),
        max_attempts=max_attempts if isinstance(max_attempts, int) else 1,
        backoff_initial_s=num("backoff_initial_s"), backoff_multiplier=num("backoff_multiplier"),
        backoff_max_s=num("backoff_max_s"), backoff_jitter=num("backoff_jitter"),
    )


def shown(state: TriggerState) -> TriggerState:
    """``state`` as every read shows it: the SASL password (if any) as ``HIDDEN``."""
    return state if state.sasl_password is None else replace(state, sasl_password=HIDDEN)
