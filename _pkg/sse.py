"""A small async reader of Server-Sent Events, for the API's watch endpoints (``/tasks/{id}/watch``, ``/tasks/watch``).

It depends on httpx only, so a client can import it without the server's
packages. It does not reconnect: a caller that wants to resume after a
dropped connection calls it again with the ``id`` of the last event it got
(``last_event_id``); the API then sends every change after it, no gap and no
repeat. Comment lines (the API's ``: ping`` heartbeats) are skipped.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = ["SseEvent", "read_sse"]


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One event: its type (``task``, ``position``, ``error``), its id (None if it had none) and its data."""

    event: str
    id: str | None
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


async def read_sse(client: httpx.AsyncClient, url: str, *, params: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None, last_event_id: str | None = None,
                   ) -> AsyncIterator[SseEvent]:
    """Yield the events of ``GET url`` until the server ends the stream.

    ``last_event_id`` is sent as ``Last-Event-ID``. A response that is not a
    200 raises ``httpx.HTTPStatusError`` (its body, a problem JSON, is read
    first so the caller can show it). Give ``client`` a read timeout longer
    than the server's heartbeat interval (15 s by default), or none.
    """
    hdrs = {"Accept": "text/event-stream", **(headers or {})}
    if last_event_id is not None:
        hdrs["Last-Event-ID"] = last_event_id
    async with client.stream("GET", url, params=params, headers=hdrs) as response:
        if response.status_code != 200:
            await response.aread()
            response.raise_for_status()
        event, id_, data = "message", None, []
        async for line in response.aiter_lines():
            if line == "":
                if data:
                    yield SseEvent(event, id_, "\n".join(data))
                event, id_, data = "message", None, []
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value
            elif name == "id":
                id_ = value
