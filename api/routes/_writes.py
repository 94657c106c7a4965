"""Writing to the log from the routes: encode, size-check, produce, await acks, update the read model.

Every route that writes goes through here, so all of them share the rules:
events are encoded and size-checked before the first byte is produced
(bad input writes nothing); a route answers only after the broker
acknowledged every record it wrote (acks=all); a task's (or schedule's)
initial state goes into the read model as soon as its ``TaskCreated`` (or
``ScheduleCreated``) is acknowledged (read-your-writes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from taskstream.schemas import (
    BrokerUnavailable,
    Event,
    ScheduleCreated,
    ScheduleState,
    TaskCreated,
    TaskState,
    Topics,
    codec,
    initial_state,
)

from taskstream.schemas.limits import MAX_RECORD_BYTES

from ..models import initial_schedule
from ..problems import problem

#: One event must fit in a record of ours (``MAX_RECORD_BYTES``, with room for framing and headers). The request
#: limits keep every event far under it; an event above it is the client's problem (413), not the broker's (503).
MAX_EVENT_BYTES = MAX_RECORD_BYTES - 4096


class TooLarge(Exception):
    def __init__(self, field: str, size: int) -> None:
        super().__init__(field)
        self.field = field
        self.size = size

    def response(self):
        return problem(
            413, "Request body too large",
            f"{self.field}: the task encodes to {self.size} bytes, more than the event log takes ({MAX_EVENT_BYTES})",
            kind="too-large",
        )


def encode(event: Event, field: str = "payload") -> bytes:
    """The record value of ``event``; ``TooLarge`` naming ``field`` if it cannot go into the log."""
    value = codec.encode(event)
    if len(value) > MAX_EVENT_BYTES:
        raise TooLarge(field, len(value))
    return value


async def write(app_state: Any, records: Sequence[tuple[Event, bytes]]) -> None:
    """Produce every record to ``<p>.events`` keyed by its task and wait for all acks.

    Records are produced together (the producer pipelines them) and awaited
    together. Every acknowledged ``TaskCreated`` (``ScheduleCreated``) is
    applied to the read model even if another record of the same call
    failed; then the first failure is raised as ``BrokerUnavailable`` (503).
    A schedule's initial state is stored only if the read model has none
    yet: the processor's state may already be there.
    """
    topic = Topics(app_state.settings.prefix).events
    producer = app_state.producer
    futures: list[asyncio.Future] = []
    failure: BaseException | None = None
    for event, value in records:
        try:
            futures.append(producer.send(topic, key=event.task_id.encode(), value=value, headers=codec.headers(event)))
        except BrokerUnavailable as exc:
            failure = exc
            break
    results = await asyncio.gather(*futures, return_exceptions=True)
    store = app_state.read_model.store
    for (event, _), result in zip(records, results):
        if isinstance(result, BaseException):
            failure = failure or result
        elif isinstance(event, TaskCreated):
            store.apply(initial_state(event))
        elif isinstance(event, ScheduleCreated):
            app_state.read_model.schedules.apply(initial_schedule(event), only_if_absent=True)
    if failure is not None:
        if isinstance(failure, BrokerUnavailable):
            raise failure
        raise BrokerUnavailable(str(failure)) from failure


def expect(app_state: Any, state: TaskState, over_version: int) -> TaskState:
    """Put the expected result of a change into the read model unless a newer state is already there.

    The processor will publish the real state (with the same or a higher
    version) and replace it; until then a GET shows the change right away.
    Returns what the read model holds afterwards.
    """
    store = app_state.read_model.store
    store.apply(state, only_over_version=over_version)
    return store.get(state.task_id) or state


def expect_schedule(app_state: Any, state: ScheduleState, over_version: int) -> ScheduleState:
    """``expect`` for a schedule: its expected state unless the processor already published a newer one."""
    store = app_state.read_model.schedules
    store.apply(state, only_over_version=over_version)
    return store.get(state.schedule_id) or state
