"""A task's dependents, kept out of its state record: one edge per (upstream, dependent) (pure: no I/O).

A task's ``TaskState`` is one record of ``<p>.state`` and must stay bounded,
while anyone may register a dependent with any task they know the id of. So
the dependents are not a list in the state: each is an *edge*, a record of
its own in the upstream's partition (the processor's table and ``<p>.state``,
key ``edge_key(upstream, dependent)``, value the ``DependencyRegistered``
that recorded it). No bound applies to their number: each edge is paid for by
its dependent, a task its submitter created (docs/decisions: dependents out
of the state record).

The rules, for everyone who folds the log (the processor, ``state rebuild``,
time travel):

- ``recorded(state, event)``: the dependent an event records on a task (a
  ``DependencyRegistered`` on a task that exists and that the dependent does
  not close a cycle with, ``closes_cycle``); the processor writes the edge.
- ``owed(before, after, event)`` / ``owed_again(state, event)`` (``react.py``):
  what a step (or its replay after a crash) owes every dependent: ``RESOLVE``
  when the task ends, ``REDRIVE`` when a redrive re-opens it;
  ``to_dependents`` makes those events for the dependents the caller read
  from its edges (``step`` and ``replay`` take them as ``dependents``).
- ``dependents_of(state, edges)``: the dependents to notify or show: the
  edges, and the list a state record of before this change may embed
  (``TaskState.dependents``, no longer grown), sorted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from taskstream.schemas import DependencyRegistered, Event, TaskState

from .dependencies import closes_cycle
from .evolve import evolve

#: Keys of edge records (processor table, ``<p>.state``): ids are printable, so NUL separates without ambiguity
#: and no task or schedule id can start with it.
EDGE_PREFIX = b"\x00dependent\x00"


def edge_key(upstream: str, dependent: str) -> bytes:
    """The key of the edge ``upstream -> dependent``; the edges of one upstream are adjacent, by dependent id."""
    return edges_prefix(upstream) + dependent.encode()


def edges_prefix(upstream: str) -> bytes:
    """The common prefix of every edge key of ``upstream``."""
    return EDGE_PREFIX + upstream.encode() + b"\x00"


def is_edge_key(key: bytes) -> bool:
    return key.startswith(EDGE_PREFIX)


def edge_of(key: bytes) -> tuple[str, str]:
    """``(upstream, dependent)`` of an edge key (``ValueError`` for any other key)."""
    if not is_edge_key(key):
        raise ValueError(f"not an edge key: {key!r}")
    upstream, sep, dependent = key[len(EDGE_PREFIX):].partition(b"\x00")
    if not sep:
        raise ValueError(f"not an edge key: {key!r}")
    return upstream.decode(), dependent.decode()


def recorded(state: object, event: Event) -> DependencyRegistered | None:
    """The registration ``event`` records as an edge of the task in ``state`` (the state before it), or None.

    A registration with a task that does not exist (yet) is answered
    ``unknown`` and leaves nothing; one that closes a cycle the processor can
    see is answered ``unknown`` and not recorded either (a redrive must not
    cascade around the cycle). Recording an edge twice is one edge.
    """
    if (isinstance(event, DependencyRegistered) and isinstance(state, TaskState)
            and not closes_cycle(state, event.dependent)):
        return event
    return None


def dependents_of(state: TaskState, edges: Iterable[str] = ()) -> list[str]:
    """The dependents of the task: its ``edges`` and those its state record embeds (records of before the
    edges), sorted and once each."""
    return sorted({*state.dependents, *edges})


def with_dependents(state: Any, edges: Iterable[str]) -> Any:
    """``state`` showing its dependents in ``dependents`` (``dependents_of``), as the API shows a task."""
    if not isinstance(state, TaskState):
        return state
    merged = dependents_of(state, edges)
    return state if merged == state.dependents else replace(state, dependents=merged)


def fold_with_dependents(events: Iterable[Event], state: Any = None) -> Any:
    """Fold a task's events (oldest first) and show the dependents their registrations recorded."""
    edges: list[str] = []
    for event in events:
        if (edge := recorded(state, event)) is not None:
            edges.append(edge.dependent)
        state = evolve(state, event)
    return with_dependents(state, edges)
