import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Pause(_message.Message):
    __slots__ = ("kind", "name", "paused", "paused_at", "paused_by", "reason", "partitions_paused")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    PAUSED_AT_FIELD_NUMBER: _ClassVar[int]
    PAUSED_BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_PAUSED_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    paused: bool
    paused_at: _timestamp_pb2.Timestamp
    paused_by: str
    reason: str
    partitions_paused: int
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., paused: _Optional[bool] = ..., paused_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., paused_by: _Optional[str] = ..., reason: _Optional[str] = ..., partitions_paused: _Optional[int] = ...) -> None: ...

class PauseRequest(_message.Message):
    __slots__ = ("name", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListPausesRequest(_message.Message):
    __slots__ = ("kind",)
    KIND_FIELD_NUMBER: _ClassVar[int]
    kind: str
    def __init__(self, kind: _Optional[str] = ...) -> None: ...

class ListPausesResponse(_message.Message):
    __slots__ = ("pauses",)
    PAUSES_FIELD_NUMBER: _ClassVar[int]
    pauses: _containers.RepeatedCompositeFieldContainer[Pause]
    def __init__(self, pauses: _Optional[_Iterable[_Union[Pause, _Mapping]]] = ...) -> None: ...

class LimitHolder(_message.Message):
    __slots__ = ("task_id", "attempt")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class Limit(_message.Message):
    __slots__ = ("key", "gate_id", "limit", "rate", "per_s", "holding", "waiting", "rate_used", "blocked_by", "next_start_at", "holders", "waiting_tasks", "granted", "updated_at")
    KEY_FIELD_NUMBER: _ClassVar[int]
    GATE_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    PER_S_FIELD_NUMBER: _ClassVar[int]
    HOLDING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    RATE_USED_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_BY_FIELD_NUMBER: _ClassVar[int]
    NEXT_START_AT_FIELD_NUMBER: _ClassVar[int]
    HOLDERS_FIELD_NUMBER: _ClassVar[int]
    WAITING_TASKS_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    key: str
    gate_id: str
    limit: int
    rate: int
    per_s: float
    holding: int
    waiting: int
    rate_used: int
    blocked_by: str
    next_start_at: _timestamp_pb2.Timestamp
    holders: _containers.RepeatedCompositeFieldContainer[LimitHolder]
    waiting_tasks: _containers.RepeatedScalarFieldContainer[str]
    granted: int
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, key: _Optional[str] = ..., gate_id: _Optional[str] = ..., limit: _Optional[int] = ..., rate: _Optional[int] = ..., per_s: _Optional[float] = ..., holding: _Optional[int] = ..., waiting: _Optional[int] = ..., rate_used: _Optional[int] = ..., blocked_by: _Optional[str] = ..., next_start_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., holders: _Optional[_Iterable[_Union[LimitHolder, _Mapping]]] = ..., waiting_tasks: _Optional[_Iterable[str]] = ..., granted: _Optional[int] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class LimitTotals(_message.Message):
    __slots__ = ("keys", "holding", "waiting")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    HOLDING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    keys: int
    holding: int
    waiting: int
    def __init__(self, keys: _Optional[int] = ..., holding: _Optional[int] = ..., waiting: _Optional[int] = ...) -> None: ...

class HandlerLimit(_message.Message):
    __slots__ = ("kind", "name", "limit", "rate", "per_s")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    PER_S_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    limit: int
    rate: int
    per_s: float
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., limit: _Optional[int] = ..., rate: _Optional[int] = ..., per_s: _Optional[float] = ...) -> None: ...

class ListLimitsRequest(_message.Message):
    __slots__ = ("key", "active", "limit", "cursor")
    KEY_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    key: str
    active: bool
    limit: int
    cursor: str
    def __init__(self, key: _Optional[str] = ..., active: _Optional[bool] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class ListLimitsResponse(_message.Message):
    __slots__ = ("limits", "next_cursor", "totals", "handlers")
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    HANDLERS_FIELD_NUMBER: _ClassVar[int]
    limits: _containers.RepeatedCompositeFieldContainer[Limit]
    next_cursor: str
    totals: LimitTotals
    handlers: _containers.RepeatedCompositeFieldContainer[HandlerLimit]
    def __init__(self, limits: _Optional[_Iterable[_Union[Limit, _Mapping]]] = ..., next_cursor: _Optional[str] = ..., totals: _Optional[_Union[LimitTotals, _Mapping]] = ..., handlers: _Optional[_Iterable[_Union[HandlerLimit, _Mapping]]] = ...) -> None: ...

class SetHandlerLimitRequest(_message.Message):
    __slots__ = ("name", "limit", "rate", "per_s")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    PER_S_FIELD_NUMBER: _ClassVar[int]
    name: str
    limit: int
    rate: int
    per_s: float
    def __init__(self, name: _Optional[str] = ..., limit: _Optional[int] = ..., rate: _Optional[int] = ..., per_s: _Optional[float] = ...) -> None: ...

class ClearHandlerLimitRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...
