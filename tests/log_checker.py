"""The fault tests' checker: reads the whole ``<p>.events`` log and the ready topics after a fault and says what was
lost, what was written twice and how often each handler ran (issue 27, item 4).

It reads as every reader of ours does, through the factory's ``reader`` (``read_committed``), each topic from its
beginning up to its end offsets taken at the call (``schemas.kafka.read_to_ends``), so every record acknowledged
before the call is seen. ``check`` is pure over what was read; ``LogCheck.problems`` lists each broken property,
so a test asserts ``problems == []`` and prints ``summary()``:

- every acknowledged submission reaches exactly one terminal status: its events, folded as the processor folds them
  (``streams.domain.fold_next``), end terminal, and the status enters the terminal set once and never leaves it;
- no event is folded twice: every record of ``<p>.events`` carries an ``event_id`` of its own (a producer's retry
  that wrote a record again, or a processor that decided a follow-up twice, repeats one: ids of follow-ups derive
  from their cause);
- no ready message was emitted twice: one record per (task, attempt) across ``<p>.ready.*``;
- handler runs per task are counted, not judged: an executor that dies mid-attempt, or loses its partitions, runs
  the attempt again (at least once, by design). A run is a TaskStarted or a result (TaskSucceeded/TaskFailed) of an
  attempt, whichever the attempt has more of.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from taskstream.schemas import (
    ReadyTask,
    Settings,
    TaskStarted,
    TaskSucceeded,
    Topics,
    codec,
)
from taskstream.schemas import TaskFailed as _TaskFailed
from taskstream.schemas.events import TERMINAL
from taskstream.schemas.kafka import end_offsets, read_to_ends, reader
from taskstream.streams.domain.order import fold_next


def read_topic(settings: Settings, topic: str, timeout: float = 120.0) -> list:
    """Every committed record of ``topic`` (all partitions, from the beginning up to the end offsets now),
    decoded; a record that does not decode is kept as ``None``."""
    consumer = reader(settings, "fault-checker", f"{settings.prefix}-fault-checker", {"enable.partition.eof": True})
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        ends = end_offsets(consumer, topic, partitions, timeout=30)
        out = []
        for batch in read_to_ends(consumer, topic, ends, timeout=timeout):
            for m in batch:
                try:
                    out.append(codec.decode(m.value()))
                except Exception:
                    out.append(None)
        return out
    finally:
        consumer.close()


@dataclass
class LogCheck:
    """What ``check`` found; ``problems`` empty when every property holds."""

    tasks: int
    problems: list[str] = field(default_factory=list)
    #: (task, attempt) -> runs of that attempt (see the module docstring), for the acknowledged tasks.
    runs: Counter[tuple[str, int]] = field(default_factory=Counter)
    #: task -> status it ended in.
    final: dict[str, str] = field(default_factory=dict)
    #: task -> when its (first) TaskSucceeded occurred.
    succeeded_at: dict[str, datetime] = field(default_factory=dict)
    events: int = 0
    ready: int = 0

    @property
    def run_twice(self) -> dict[tuple[str, int], int]:
        return {k: n for k, n in self.runs.items() if n > 1}

    def summary(self) -> str:
        statuses = Counter(self.final.values())
        return (f"{self.tasks} acknowledged tasks, final statuses {dict(statuses)}; {self.events} events "
                f"(ids unique: {not any('event id' in p for p in self.problems)}), {self.ready} ready messages; "
                f"attempts run more than once: {len(self.run_twice)} (runs per attempt "
                f"{dict(sorted(Counter(self.runs.values()).items()))})")


def check(acknowledged: Iterable[str], events: list, ready: list) -> LogCheck:
    """Check the properties of the module docstring for the ``acknowledged`` task ids over ``events`` (the whole
    ``<p>.events`` log, in log order per task) and ``ready`` (every record of the ready topics)."""
    wanted = set(acknowledged)
    out = LogCheck(tasks=len(wanted), events=len(events), ready=len(ready))
    undecodable = sum(1 for e in events if e is None) + sum(1 for r in ready if r is None)
    if undecodable:
        out.problems.append(f"{undecodable} record(s) that do not decode")
    events = [e for e in events if e is not None]

    ids = Counter(e.event_id for e in events)
    repeated = {i: n for i, n in ids.items() if n > 1}
    if repeated:
        out.problems.append(f"{len(repeated)} event id(s) in the log more than once, e.g. {list(repeated.items())[:5]}")

    per_attempt = Counter((r.task_id, r.attempt) for r in ready if isinstance(r, ReadyTask))
    twice = {k: n for k, n in per_attempt.items() if n > 1}
    if twice:
        out.problems.append(f"{len(twice)} ready message(s) emitted more than once, e.g. {list(twice.items())[:5]}")

    states: dict[str, object] = {}
    awaiting: dict[str, object] = {}
    entered: Counter[str] = Counter()
    left: Counter[str] = Counter()
    starts: Counter[tuple[str, int]] = Counter()
    results: Counter[tuple[str, int]] = Counter()
    for e in events:
        tid = e.task_id
        if tid not in wanted:
            continue
        before = getattr(states.get(tid), "status", None)
        states[tid], awaiting[tid] = fold_next(states.get(tid), awaiting.get(tid), e)  # type: ignore[arg-type]
        after = getattr(states[tid], "status", None)
        if (before in TERMINAL) != (after in TERMINAL):
            (entered if after in TERMINAL else left)[tid] += 1
        if isinstance(e, TaskStarted):
            starts[(tid, e.attempt)] += 1
        elif isinstance(e, TaskSucceeded | _TaskFailed):
            results[(tid, e.attempt)] += 1
            if isinstance(e, TaskSucceeded):
                out.succeeded_at.setdefault(tid, e.occurred_at)
    for key in starts.keys() | results.keys():
        out.runs[key] = max(starts[key], results[key])
    out.final = {tid: getattr(states.get(tid), "status", "missing") for tid in wanted}

    missing = sorted(wanted - states.keys())
    if missing:
        out.problems.append(f"{len(missing)} acknowledged task(s) with no event in the log, e.g. {missing[:5]}")
    unfinished = sorted(t for t, s in out.final.items() if t in states and s not in TERMINAL)
    if unfinished:
        out.problems.append(f"{len(unfinished)} acknowledged task(s) not terminal, e.g. "
                            f"{[(t, out.final[t]) for t in unfinished[:5]]}")
    twice_terminal = sorted(t for t in wanted if entered[t] > 1 or left[t] > 0)
    if twice_terminal:
        out.problems.append(f"{len(twice_terminal)} task(s) whose status entered a terminal one more than once or "
                            f"left it, e.g. {twice_terminal[:5]}")
    made_ready = {t for t, _ in per_attempt}
    never_ready = sorted(t for t in wanted if t in states and t not in made_ready)
    if never_ready:
        out.problems.append(f"{len(never_ready)} task(s) never made ready, e.g. {never_ready[:5]}")
    return out


def check_log(settings: Settings, acknowledged: Iterable[str]) -> LogCheck:
    """``check`` over the whole log and ready topics of ``settings.prefix`` as they are now."""
    topics = Topics(settings.prefix)
    events = read_topic(settings, topics.events)
    ready = [r for t in topics.all_ready for r in read_topic(settings, t)]
    return check(acknowledged, events, ready)
