"""The dispatcher: the executor's loop side, granting free slots to waiting deliveries by priority.

It waits until the intake has work (``wake_threadsafe``, from the consumer's
thread), takes deliveries out of the intake by smooth weighted round-robin
over the priorities with a backlog (``_scheduling.WeightedRoundRobin``) while
fewer than ``concurrency`` attempts run, and starts each as a task running
``AttemptRunner.run``. It is also the one door from other threads onto the
loop (``wake_threadsafe``, ``cancel_threadsafe``), and at shutdown it gives
running attempts the grace period before giving up on them.
"""


from __future__ import annotations

import asyncio
import contextlib
import logging

from taskstream.schemas.observability import about

from ._attempt import AttemptRunner, Delivered
from ._intake import Intake
from ._scheduling import WeightedRoundRobin

log = logging.getLogger("taskstream.executors.runtime")


class Dispatcher:
    """Grants at most ``concurrency`` slots at once to deliveries, run by ``runner``.

    Built on the loop it serves, before the intake (whose notifications go
    to ``wake_threadsafe`` and ``cancel_threadsafe``). ``run(intake, stop)``
    dispatches the intake's deliveries until ``stop`` is set or ``close`` is
    called; ``close(grace_s)`` waits for the running attempts
    at most ``grace_s`` seconds, then cancels the rest (their offsets stay
    uncommitted: they run again elsewhere). ``running`` is how many run now.
    """

    def __init__(self, runner: AttemptRunner, concurrency: int, picker: WeightedRoundRobin) -> None:
        self._runner = runner
        self._concurrency = concurrency
        self._picker = picker
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._wake_pending = False
        self._slots: dict[asyncio.Task, Delivered] = {}
        self._dispatching: asyncio.Task | None = None

    @property
    def running(self) -> int:
        return len(self._slots)

    def running_ids(self) -> list[str]:
        """Task ids of the attempts running now, oldest slot first (on the loop)."""
        return [d.task.task_id for d in list(self._slots.values())]

    # ------------------------------------------------------- from other threads

    def wake_threadsafe(self) -> None:
        """Work may be waiting: look at the intake again (coalesced; a closed loop is ignored)."""
        if not self._wake_pending:
            self._wake_pending = True
            self._call_soon(self._wakeup)

    def cancel_threadsafe(self, delivery: Delivered) -> None:
        """``delivery``'s task was cancelled while it runs: have the runner stop it."""
        self._call_soon(self._runner.cancel, delivery)

    def _call_soon(self, fn, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop closed during shutdown
            pass

    def _wakeup(self) -> None:
        self._wake_pending = False
        self._wake.set()

    # ----------------------------------------------------------------- the loop

    async def run(self, intake: Intake, stop: asyncio.Event) -> None:
        self._dispatching = asyncio.current_task()
        while not stop.is_set():
            await self._wake.wait()
            self._wake.clear()
            hold = intake.hold_s()
            while hold > 0 and not stop.is_set():  # a fresh assignment settles; the intake wakes us when it has
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), hold)
                hold = intake.hold_s()
            while len(self._slots) < self._concurrency and not stop.is_set():
                delivery = intake.take(self._picker.pick)
                if delivery is None:
                    break
                self._start(delivery)

    def _start(self, delivery: Delivered) -> None:
        t = delivery.task
        slot = asyncio.create_task(self._runner.run(delivery), name=f"task-{t.task_id}-{t.attempt}")
        self._slots[slot] = delivery
        slot.add_done_callback(self._finished)

    def _finished(self, slot: asyncio.Task) -> None:
        delivery = self._slots.pop(slot, None)
        if not slot.cancelled() and slot.exception() is not None and delivery is not None:
            t = delivery.task
            log.error("task %s attempt %d: runner failed: %r", t.task_id, t.attempt, slot.exception(),
                      extra=about(t.task_id, t.attempt))
        self._wake.set()

    async def close(self, grace_s: float) -> None:
        """Stop granting slots; wait ``grace_s`` for the running attempts, then give up on the rest."""
        if self._dispatching is not None:
            self._dispatching.cancel()
            await asyncio.gather(self._dispatching, return_exceptions=True)
        if not self._slots:
            return
        _, pending = await asyncio.wait(list(self._slots), timeout=grace_s)
        for slot in pending:
            delivery = self._slots.get(slot)
            if delivery is not None:
                t = delivery.task
                log.warning(
                    "task %s attempt %d: unfinished after the %ss grace period; not committed, will be redelivered",
                    t.task_id, t.attempt, grace_s, extra=about(t.task_id, t.attempt)
                )
            slot.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
