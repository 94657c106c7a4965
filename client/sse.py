"""Readers of Server-Sent Events, for the API's watch endpoints (``/tasks/{id}/watch``, ``/tasks/watch``).

httpx only. ``read_sse`` (async) and ``iter_sse`` (sync) yield the events of
one ``GET`` until the server ends the stream; they do not reconnect: a caller
that wants to resume after a dropped connection calls again with the ``id`` of
the last event it got (``last_event_id``), and the API then sends every change
after it, no gap and no repeat (``Client.watch`` does that for you). Comment
lines (the API's heartbeats) are skipped. A response that is not a 200 raises
the client's typed error (``taskstream.client.errors``).

With a ``deadline`` (a ``time.monotonic()`` value) a reader waits no longer
than asked: the stream's read timeout is at most the time left, every line
(heartbeats included) checks the clock, and ``StreamDeadline`` ends the read
once it passed. Heartbeats reset a read timeout, so a stream opened long
before the deadline could otherwise read past it: once its read timeout
outlasts the time left by more than ``RENEW_SLACK_S``, the reader raises
``StreamRenew`` and the caller opens it again after the last id it got.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Generator, Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from ._calls import check

__all__ = ["SseEvent", "StreamDeadline", "StreamRenew", "iter_sse", "read_sse"]

#: A stream waits this long for its next line: longer than the API's heartbeat interval (15 s by default).
STREAM_TIMEOUT = httpx.Timeout(10.0, read=60.0)
#: With a deadline, a stream is opened again once its read timeout outlasts the time left by this many seconds.
RENEW_SLACK_S = 1.0


class StreamDeadline(TimeoutError):
    """The deadline given to ``read_sse``/``iter_sse`` passed."""


class StreamRenew(Exception):  # noqa: N818 - a signal to the caller, not an error
    """The stream's read timeout now outlasts the deadline: open it again (after the last id) to keep to it."""


def _timeout(deadline: float | None) -> httpx.Timeout:
    if deadline is None:
        return STREAM_TIMEOUT
    left = deadline - time.monotonic()
    if left <= 0:
        raise StreamDeadline
    return httpx.Timeout(min(10.0, left), read=min(STREAM_TIMEOUT.read or left, left))


def _check(deadline: float | None, timeout: httpx.Timeout) -> None:
    """At each line: ``StreamDeadline`` past the deadline, ``StreamRenew`` when the read timeout outlasts it."""
    if deadline is None:
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise StreamDeadline
    if timeout.read is not None and timeout.read - left > RENEW_SLACK_S:
        raise StreamRenew


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One event: its type (``task``, ``position``, ``error``), its id (None if it had none) and its data."""

    event: str
    id: str | None
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


class _Parser:
    """The SSE line protocol: feed lines, get complete events."""

    def __init__(self) -> None:
        self.event: str = "message"
        self.id: str | None = None
        self.data: list[str] = []

    def feed(self, line: str) -> SseEvent | None:
        if line == "":
            out = SseEvent(self.event, self.id, "\n".join(self.data)) if self.data else None
            self.event, self.id, self.data = "message", None, []
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self.data.append(value)
        elif name == "event":
            self.event = value
        elif name == "id":
            self.id = value
        return None


def _headers(headers: dict[str, str] | None, last_event_id: str | None) -> dict[str, str]:
    out = {"Accept": "text/event-stream", **(headers or {})}
    if last_event_id is not None:
        out["Last-Event-ID"] = last_event_id
    return out


async def read_sse(client: httpx.AsyncClient, url: str, *, params: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None, last_event_id: str | None = None,
                   deadline: float | None = None) -> AsyncGenerator[SseEvent, None]:
    """Yield the events of ``GET url`` until the server ends the stream (``Last-Event-ID`` if given).

    A stream that stays silent past ``STREAM_TIMEOUT`` (no heartbeat either) raises ``httpx.ReadTimeout``;
    ``deadline``: see the module docstring (``StreamDeadline``, ``StreamRenew``).
    """
    timeout = _timeout(deadline)
    async with client.stream("GET", url, params=params, headers=_headers(headers, last_event_id),
                             timeout=timeout) as response:
        if response.status_code != 200:
            await response.aread()
            check(response)
        parser = _Parser()
        async for line in response.aiter_lines():
            if (event := parser.feed(line)) is not None:
                yield event
            _check(deadline, timeout)


def iter_sse(client: httpx.Client, url: str, *, params: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None, last_event_id: str | None = None,
             deadline: float | None = None) -> Generator[SseEvent, None, None]:
    """``read_sse`` for a synchronous ``httpx.Client``."""
    timeout = _timeout(deadline)
    with client.stream("GET", url, params=params, headers=_headers(headers, last_event_id),
                       timeout=timeout) as response:
        if response.status_code != 200:
            response.read()
            check(response)
        parser = _Parser()
        for line in response.iter_lines():
            if (event := parser.feed(line)) is not None:
                yield event
            _check(deadline, timeout)


def parse(lines: Iterable[str]) -> list[SseEvent]:
    """Every complete event in ``lines`` (for tests and tools)."""
    parser = _Parser()
    return [e for line in lines if (e := parser.feed(line)) is not None]
