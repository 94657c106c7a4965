"""What a consumer of ours may commit, and how a message it cannot take goes to the dead-letter topic.

``PartitionOffsets`` tracks the offsets taken from one partition during one
assignment: they arrive in increasing order, are marked done in any order,
and ``position`` (one past the highest contiguous done offset) is what may be
committed, so a message is committed only once its outcome is safe. The
executor and the retry relay keep one per assigned partition.

``poison_headers`` is the contract of a poison message in ``<p>.dlq`` (the
record as it was, or without its value when even that was refused): where it
came from and why, as ``taskstream dlq list`` reads it.
"""

from __future__ import annotations

from collections import deque

#: Headers of a poison message in ``<p>.dlq``, in this order.
POISON_HEADERS = ("source-topic", "source-partition", "source-offset", "reason")
MAX_REASON_BYTES = 1000


class PartitionOffsets:
    """Offsets taken from one partition and which are done; ``held``: how many wait outside the consumer."""

    __slots__ = ("pending", "done", "position", "committed", "held")

    def __init__(self) -> None:
        self.pending: deque[int] = deque()
        self.done: set[int] = set()
        self.position: int | None = None
        self.committed: int | None = None
        self.held = 0

    def add(self, offset: int) -> None:
        """An offset taken (in increasing order)."""
        self.pending.append(offset)

    def mark_done(self, offset: int) -> None:
        """An offset whose outcome is safe; moves ``position`` past every contiguous done offset."""
        self.done.add(offset)
        while self.pending and self.pending[0] in self.done:
            first = self.pending.popleft()
            self.done.discard(first)
            self.position = first + 1


def poison_headers(topic: str, partition: int | None, offset: int | None, reason: str) -> list[tuple[str, bytes]]:
    """The headers of a poison message from ``topic[partition]@offset`` (unknown ones left out)."""
    headers = [("source-topic", topic.encode())]
    if partition is not None:
        headers.append(("source-partition", str(partition).encode()))
    if offset is not None:
        headers.append(("source-offset", str(offset).encode()))
    headers.append(("reason", reason.encode()[:MAX_REASON_BYTES]))
    return headers
