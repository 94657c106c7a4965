"""Events, the codec, the topic catalogue, settings and errors: what every part shares.

Imported by ``taskstream.streams``, ``taskstream.executors`` and
``taskstream.api``; imports none of them.
"""

from .errors import (
    BrokerUnavailable,
    CommandRejected,
    DecodeError,
    NotFound,
    RecordRefused,
    SecurityRefused,
    StaleVersion,
    TaskstreamError,
    TooLarge,
    TopicMismatch,
    ValidationError,
    WriteOutcomeUnknown,
)
from .events import (
    EVENT_TYPES,
    GATE_EVENT_TYPES,
    SCHEDULE_EVENT_TYPES,
    TERMINAL,
    DependencyRegistered,
    DependencyResolved,
    Event,
    GateEvent,
    GateState,
    GateWoken,
    Heartbeat,
    LeaseExpired,
    Priority,
    ReadyTask,
    ScheduleBackfilled,
    ScheduleCreated,
    ScheduleDeleted,
    ScheduleEvent,
    ScheduleFired,
    SchedulePaused,
    ScheduleResumed,
    ScheduleState,
    ScheduleStatus,
    ScheduleTriggered,
    SlotGranted,
    SlotReleased,
    SlotRequested,
    Status,
    TaskCancelled,
    TaskCheckpointed,
    TaskCreated,
    TaskDeadLettered,
    TaskEvent,
    TaskFailed,
    TaskQueued,
    TaskRedriven,
    TaskRetryScheduled,
    TaskStarted,
    TaskState,
    TaskSucceeded,
    TaskUpdated,
    WorkflowStatus,
    derived_id,
    new_id,
)
from .retry import DEFAULT_RETRY, MAX_BACKOFF_S, RetryPolicy
from .settings import Settings
from .topics import PRIORITIES, RETRY_TIERS, Topics, TopicSpec, catalogue, retry_tier

__all__ = [
    "BrokerUnavailable", "CommandRejected", "DecodeError", "NotFound", "RecordRefused", "SecurityRefused",
    "StaleVersion", "TooLarge",
    "TaskstreamError", "TopicMismatch", "ValidationError", "WriteOutcomeUnknown", "EVENT_TYPES", "DependencyRegistered",
    "DependencyResolved", "TaskCancelled", "TaskUpdated", "TERMINAL", "Event", "Priority", "ReadyTask", "Status",
    "TaskCreated", "TaskFailed", "TaskQueued", "TaskStarted", "TaskState", "TaskSucceeded", "new_id", "Heartbeat",
    "LeaseExpired", "ScheduleCreated", "ScheduleDeleted", "ScheduleFired", "ScheduleState", "ScheduleStatus",
    "TaskCheckpointed", "TaskDeadLettered", "TaskRedriven", "TaskRetryScheduled", "DEFAULT_RETRY", "RetryPolicy",
    "Settings", "MAX_BACKOFF_S", "PRIORITIES", "RETRY_TIERS", "Topics", "TopicSpec", "catalogue", "retry_tier",
    "SCHEDULE_EVENT_TYPES", "ScheduleEvent", "TaskEvent", "WorkflowStatus", "derived_id", "SchedulePaused",
    "ScheduleResumed", "ScheduleTriggered", "ScheduleBackfilled",
    "GATE_EVENT_TYPES", "GateEvent", "GateState", "GateWoken", "SlotGranted", "SlotReleased", "SlotRequested",
]
