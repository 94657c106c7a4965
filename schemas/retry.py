"""A task's retry policy: one frozen value, its defaults and bounds written once.

``RetryPolicy`` is what the settings' ``default_*`` fields build (the
defaults of every new task), what the API fills a request's ``retry`` into,
what ``TaskCreated``/``TaskState`` carry as flat fields (``max_attempts``,
``backoff_initial_s``, ``backoff_multiplier``, ``backoff_max_s``,
``backoff_jitter``: ``fields()`` and ``of()`` convert) and what the decider
(``streams.domain``) computes each wait with. It lives in ``schemas`` rather
than ``streams.domain`` because the settings, which every package imports,
are built from it; ``streams.domain`` re-exports it. Pure: no I/O, no
clock; the arithmetic is total (any numbers a log may hold give a wait in
``[0, MAX_BACKOFF_S]``, never an exception).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from typing import Any

#: Longest wait between attempts whatever a policy says (the retry topics keep messages 14 days).
MAX_BACKOFF_S = 7 * 24 * 3600.0
#: The flat names events, states and schedule templates carry the backoff under (``backoff_<field>``).
BACKOFF_FIELDS = ("initial_s", "multiplier", "max_s", "jitter")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How many attempts a task gets and how long it waits between them.

    The wait after the k-th failed attempt since the task was created or last
    re-driven is ``min(max_s, initial_s * multiplier ** (k - 1)) * (1 - jitter * u)``,
    ``u`` in [0, 1) drawn from sha256(task id, attempt) (``jitter_draw``): the
    same on every replay, and spread so a burst of failures does not come
    back at one instant. Jitter only shortens a wait.

    Construction checks nothing, so a policy read from the log is taken as it
    is (``delay_s`` stays total); ``problems()``/``check()`` hold the bounds,
    which the settings apply to their defaults and the API to requests.
    """

    #: Attempts in all, the first included (1: no retry). A redrive grants this many again.
    max_attempts: int = 3
    #: Seconds to wait before the 2nd attempt.
    initial_s: float = 1.0
    #: Each further wait is this many times the previous one (1: constant waits).
    multiplier: float = 2.0
    #: Longest wait between two attempts, in seconds; also the most a handler may ask for (``clamp``).
    max_s: float = 300.0
    #: Waits are shortened by up to this fraction, in [0, 1].
    jitter: float = 0.1

    @classmethod
    def of(cls, source: Any, default: RetryPolicy | None = None) -> RetryPolicy:
        """The policy of anything carrying the flat fields (a TaskCreated, TaskState, SubmitTask).

        A field that is None or absent (a task written before policies existed)
        takes ``default``'s value (``DEFAULT_RETRY`` if not given).
        """
        base = default if default is not None else DEFAULT_RETRY
        given: dict[str, Any] = {}
        max_attempts = getattr(source, "max_attempts", None)
        if max_attempts is not None:
            given["max_attempts"] = max_attempts
        for name in BACKOFF_FIELDS:
            value = getattr(source, f"backoff_{name}", None)
            if value is not None:
                given[name] = value
        return replace(base, **given)

    def but(self, **changes: Any) -> RetryPolicy:
        """This policy with the given fields changed; a None value leaves its field as it is."""
        return replace(self, **{name: value for name, value in changes.items() if value is not None})

    def fields(self) -> dict[str, Any]:
        """The flat fields of ``TaskCreated``, ``SubmitTask`` and a schedule's template."""
        return {"max_attempts": self.max_attempts, **{f"backoff_{name}": float(getattr(self, name))
                                                      for name in BACKOFF_FIELDS}}

    def json(self) -> dict[str, Any]:
        """The HTTP/gRPC shape: ``{"max_attempts": n, "backoff": {"initial_s", "multiplier", "max_s", "jitter"}}``."""
        return {"max_attempts": self.max_attempts, "backoff": {name: getattr(self, name) for name in BACKOFF_FIELDS}}

    def problems(self) -> list[tuple[str, str]]:
        """``(field, message)`` for every field outside its bounds; empty for a valid policy."""
        out = []
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            out.append(("max_attempts", "must be an integer of at least 1"))
        bounds = {"initial_s": (0.0, MAX_BACKOFF_S), "multiplier": (1.0, math.inf), "max_s": (0.0, MAX_BACKOFF_S),
                  "jitter": (0.0, 1.0)}
        for name, (low, high) in bounds.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not low <= value <= high:
                most = "" if high == math.inf else f" and at most {high:g}"
                out.append((name, f"must be a finite number of at least {low:g}{most}"))
        return out

    def check(self) -> RetryPolicy:
        """This policy if it is within bounds; ValueError naming the fields otherwise."""
        if found := self.problems():
            raise ValueError("; ".join(f"{name} {message}" for name, message in found))
        return self

    def delay_s(self, k: int, u: float) -> float:
        """Seconds to wait after the ``k``-th failure since creation or the last redrive, ``u`` in [0, 1).

        Total: NaN (inf * 0) waits nothing; a wait beyond ``MAX_BACKOFF_S`` is cut
        to it, so ``now + delay`` always fits in a datetime and deciding never raises.
        """
        try:
            base = min(self.max_s, self.initial_s * self.multiplier ** (max(1, k) - 1))
        except OverflowError:
            base = self.max_s
        delay = base * (1.0 - self.jitter * u)
        return min(max(0.0, delay), MAX_BACKOFF_S) if delay == delay else 0.0

    def clamp(self, requested_s: float) -> float | None:
        """The wait a handler asked for (``raise Retry(delay_s=...)``), within this policy's bounds.

        ``min(max(requested_s, 0), max_s, MAX_BACKOFF_S)``: never negative, never
        longer than the policy's longest wait, no jitter and no growth (the
        handler named the time). None for NaN (not a time: the policy's own
        backoff applies). Whether there is a next attempt at all is not decided
        here: the failed attempt counts against ``max_attempts`` as any other.
        """
        if requested_s != requested_s:
            return None
        cap = self.max_s if self.max_s == self.max_s else MAX_BACKOFF_S
        return min(max(0.0, requested_s), max(0.0, cap), MAX_BACKOFF_S)


#: The policy of a task that names none of its fields, and the settings' defaults.
DEFAULT_RETRY = RetryPolicy()


def jitter_draw(task_id: str, attempt: int) -> float:
    """``u`` in [0, 1) for the wait after ``attempt`` of ``task_id``: sha256-derived, the same on every replay."""
    digest = hashlib.sha256(f"{task_id}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64

