"""The decider: every rule about a task or schedule, pure (no Kafka, no clock, no I/O).

- ``evolve(state, event) -> state`` and ``fold(events)``: what a fact of the
  log does to a state (``evolve.py``; ``initial_state`` of a new task).
  Two kinds of aggregate share ``<p>.events``: tasks (``TaskState``, events
  keyed by ``task_id``) and cron schedules (``ScheduleState``, events keyed
  by ``schedule_id``; their rules are ``schedules.py``). Each rule is
  registered for its aggregate's state type; the entry points dispatch once.
- ``decide(state, command, now) -> events``: the answer to a command
  (``commands.py``; guards in ``decide.py``), raising ``NotFound``,
  ``StaleVersion`` or ``CommandRejected`` when it cannot be carried out.
- ``react(before, after, event, now) -> events``: what the processor appends
  after folding an event; ``on_timer``, ``lease_expired``, ``ready_message``
  and ``replay_outputs`` for its timers, leases, ready topics and crash
  repair (``react.py``).
- ``RetryPolicy`` (defined in ``schemas.retry``: the settings build it) and
  ``backoff_delay``: the wait after a failed attempt, the policy's backoff
  or the handler's requested delay clamped to the policy (``react.py``).
- Event ids are derived, never random (``ids.py``): from the command (its
  fields, the state's version, the time) or the event a decision follows
  from, and the event's place in it; the same input gives the same events.
- ``step(state, event, now, producer)`` and ``effects(...)``: the
  processor's whole step, pure (``step.py``): fold, what follows, which
  messages go where; ``lease_after``/``heartbeat_renews`` the lease rules.
- A task's dependents are edges outside its state record (``dependents.py``):
  ``recorded`` says which registration makes one, ``owed``/``owed_again``
  and ``to_dependents`` what a task owes them when it ends or is re-opened
  (``step`` and ``replay`` ask the caller's ``dependents`` lookup only then).
- ``check_dependencies(tasks, known)``: a submission whose tasks would wait
  for ever (a self-dependency, a cycle through ids derived from an
  ``Idempotency-Key``) is refused naming ``depends_on`` (``dependencies.py``).
- ``fold_next(state, awaiting, event)`` / ``fold_log(events, as_of)``: a
  task's log folded in the order the processor applied it (its own
  follow-ups right after their trigger, ``order.py``) — the one order the
  processor, ``state rebuild``, time travel and history all fold in.
- Concurrency keys (``slots.py``, ``gates.py``): a task with a key waits
  ``pending`` with ``waiting_for`` until the key's gate, an aggregate keyed by
  ``concurrency:<key>``, grants it a slot; ``concurrency_key_of`` fills in a
  key's payload template. A key's rate (``rate_of``: at most ``rate`` starts
  in any ``per_s`` seconds) is the same gate's, clocked by the events it folds
  and woken by its timer (``wakes_at``, ``GateWoken``).
- Pause and resume (``controls.py``): a handler's or workflow's pause is a
  control aggregate copied to every partition (``PauseTarget``,
  ``ResumeTarget``); a task admitted while one of its targets is paused in
  its partition is held (``TaskHeld``, ``waiting_for: "paused:<target>"``)
  and a resume releases the partition's held tasks; ``step`` asks the
  processor's ``paused`` and ``held`` lookups for it.
- Topic triggers (``triggers.py``): an aggregate keyed by ``trigger:<name>``
  (``CreateTrigger``, ``PauseTrigger``, ``ResumeTrigger``, ``DeleteTrigger``);
  ``record_task`` is the task one record of its topic makes, with the id
  ``trigger_task_id`` (name, topic, partition, offset), for the trigger runner.
- ``workflow_status(counts)``: a workflow's overall status from its tasks'
  (``workflows.py``), for every read of a workflow.

The HTTP routes, gRPC, the processor, ``state rebuild`` and time travel all
call these; none keeps a rule of its own.
"""

from taskstream.schemas.retry import (  # the policy value lives in schemas.retry (the settings build it)
    DEFAULT_RETRY,
    MAX_BACKOFF_S,
    RetryPolicy,
    jitter_draw,
)

from .commands import (
    COMMANDS,
    PATCHABLE,
    BackfillSchedule,
    CancelTask,
    CreateSchedule,
    CreateTrigger,
    DeleteSchedule,
    DeleteTrigger,
    PauseSchedule,
    PauseTrigger,
    RedriveDeadLettered,
    RedriveTask,
    ResumeSchedule,
    ResumeTrigger,
    RunSchedule,
    SubmitTask,
    UpdateTask,
)
from .controls import (
    CONTROL_PREFIX,
    HANDLER,
    WORKFLOW,
    HandlerLimit,
    Held,
    Limits,
    LimitTarget,
    Paused,
    PauseTarget,
    ResumeTarget,
    admitted,
    control_id,
    hold_reason,
    paused_hold,
    releases,
    target,
    targets_of,
)
from .decide import REDRIVABLE, check_workflow, decide, decided, workflow_problems
from .dependencies import MAX_CYCLE_WALK, check_dependencies, closes_cycle, dependency_problems, waits_on
from .dependents import (
    EDGE_PREFIX,
    dependents_of,
    edge_key,
    edge_of,
    edges_prefix,
    fold_with_dependents,
    is_edge_key,
    recorded,
    with_dependents,
)
from .evolve import (
    ACTIVE,
    GATE_PREFIX,
    PAUSE_PREFIX,
    RESULT_BOUND,
    SCHEDULE_EVENTS,
    TERMINAL_VALUES,
    TOO_MANY_DEPENDENTS,
    UPDATABLE,
    WAITING,
    at_offset,
    attempts_left,
    evolve,
    first_queued_after_wait,
    fold,
    gate_id,
    holds_lease,
    initial_state,
    is_queued,
    is_terminal,
    waiting_until,
)
from .gates import grants, live_spent, wakes_at
from .ids import PROCESSOR, UNSET, command_cause, identified, state_cause
from .order import FOLLOW_UP_TRIGGERS, MAX_AWAITING, applied_inline, fold_log, fold_next, stamped
from .react import (
    CHANGE_DRIVEN,
    REDRIVE,
    RESOLVE,
    UNKNOWN,
    backoff_delay,
    dead_lettered,
    implied,
    is_ready,
    lease_expired,
    on_timer,
    owed,
    owed_again,
    react,
    reactions,
    ready_message,
    ready_refused,
    registrations,
    replay_outputs,
    requeued,
    resolution,
    retry_scheduled,
    timer_due,
    to_dependents,
    upstream_json,
)
from .schedules import (
    MAX_BACKFILL,
    MISSED_COUNT_CAP,
    OVERLAPS,
    backfill_task_id,
    backfill_times,
    schedule_due,
    schedule_replay,
    schedule_run_task_id,
    schedule_task_id,
    task_from_template,
)
from .slots import concurrency_key_of, gated, held, rate_of, slot_attempt, slot_messages, slot_replay
from .step import (
    RELAY_SLACK_S,
    DependentsLookup,
    Effect,
    effects,
    heartbeat_renews,
    lease_after,
    replay,
    step,
)
from .triggers import (
    HIDDEN,
    TRIGGER_PREFIX,
    matches,
    record_task,
    shown,
    start_of,
    start_time,
    trigger_id,
    trigger_problems,
    trigger_task_id,
)
from .workflows import workflow_status

__all__ = [
    "ACTIVE", "check_workflow", "workflow_problems", "MAX_CYCLE_WALK", "check_dependencies", "dependency_problems",
    "waits_on", "closes_cycle", "at_offset", "first_queued_after_wait", "holds_lease",
    "is_queued", "CHANGE_DRIVEN", "COMMANDS", "DEFAULT_RETRY", "MAX_BACKOFF_S", "MISSED_COUNT_CAP", "PATCHABLE",
    "PROCESSOR", "REDRIVABLE", "RetryPolicy", "jitter_draw", "RESULT_BOUND", "SCHEDULE_EVENTS", "TERMINAL_VALUES",
    "TOO_MANY_DEPENDENTS", "UNKNOWN", "UPDATABLE", "WAITING", "CancelTask", "CreateSchedule", "DeleteSchedule",
    "RedriveDeadLettered", "RedriveTask", "SubmitTask", "UpdateTask", "FOLLOW_UP_TRIGGERS", "RELAY_SLACK_S",
    "Effect", "effects", "fold_log", "heartbeat_renews", "lease_after", "replay", "stamped", "step",
    "attempts_left", "backoff_delay", "dead_lettered", "decide", "evolve", "fold", "fold_next", "UNSET",
    "command_cause", "identified", "state_cause", "implied", "reactions", "decided", "MAX_AWAITING",
    "applied_inline", "initial_state", "is_ready", "is_terminal", "lease_expired", "on_timer", "react",
    "ready_message", "ready_refused", "requeued", "registrations", "replay_outputs", "resolution",
    "retry_scheduled", "schedule_due", "schedule_replay", "schedule_task_id", "task_from_template", "timer_due",
    "upstream_json", "waiting_until", "workflow_status",
    "EDGE_PREFIX", "dependents_of", "edge_key", "edge_of", "edges_prefix",
    "fold_with_dependents", "is_edge_key", "recorded", "with_dependents", "REDRIVE", "RESOLVE", "owed",
    "owed_again", "to_dependents", "DependentsLookup", "PauseSchedule", "ResumeSchedule", "RunSchedule",
    "schedule_run_task_id",
    "BackfillSchedule", "MAX_BACKFILL", "OVERLAPS", "backfill_task_id", "backfill_times",
    "GATE_PREFIX", "gate_id", "grants", "concurrency_key_of", "gated", "held",
    "slot_attempt", "slot_messages", "slot_replay", "rate_of", "live_spent", "wakes_at",
    "CONTROL_PREFIX", "HANDLER", "WORKFLOW", "HandlerLimit", "Held", "Limits", "LimitTarget", "Paused", "PauseTarget",
    "ResumeTarget", "admitted",
    "control_id", "hold_reason", "paused_hold", "releases", "target", "targets_of", "PAUSE_PREFIX",
    "CreateTrigger", "PauseTrigger", "ResumeTrigger", "DeleteTrigger", "HIDDEN", "TRIGGER_PREFIX", "matches",
    "record_task", "shown", "start_of", "start_time", "trigger_id", "trigger_problems", "trigger_task_id",
]
