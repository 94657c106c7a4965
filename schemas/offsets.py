"""What a consumer of ours may commit, and how a message it cannot take goes to the dead-letter topic.

``PartitionOffsets`` tracks the offsets taken from one partition during one
assignment: they arrive in increasing order, are marked done in any order,
and ``position`` (one past the highest contiguous done offset) is what may be
committed, so a message is committed only once its outcome is safe. The
consumer runtime (``schemas.consumer``) keeps one per assigned partition;
``committed`` is what it last sent to the group, and ``forget_failed_commits`` (from the
consumer's ``on_commit``) clears it where the broker refused the commit (a
rebalance under way: ``ILLEGAL_GENERATION``, ``REBALANCE_IN_PROGRESS``), so
the next commit sends that position again.

``poison_headers`` is the contract of a poison message in ``<p>.dlq`` (the
record as it was, or without its value when even that was refused): where it
came from and why, as ``taskstream dlq list`` reads it. ``DeadLetter`` is
one such message on its way, and what each delivery report means for it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError

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
        """An offset whose outcome is safe; moves ``position`` past every contiguous done offset. An offset
        below ``position`` was done already (marked twice: nothing to do)."""
        if self.position is not None and offset < self.position:
            return
        self.done.add(offset)
        while self.pending and self.pending[0] in self.done:
            first = self.pending.popleft()
            self.done.discard(first)
            self.position = first + 1


def forget_failed_commits(
    err: Any, partitions: Sequence[Any], offsets: Mapping[tuple[str, int], PartitionOffsets]
) -> list[tuple[str, int]]:
    """For a consumer's ``on_commit(err, partitions)``: clear ``committed`` of every partition whose commit the
    broker refused (all of them when ``err`` is set); return those (topic, partition). Nothing to commit
    (``_NO_OFFSET``) is no failure."""
    if err is not None and err.code() == KafkaError._NO_OFFSET:
        return []
    failed = [(tp.topic, tp.partition) for tp in partitions if err is not None or tp.error is not None]
    for key in failed:
        if key in offsets:
            offsets[key].committed = None
    return failed


def poison_headers(topic: str, partition: int | None, offset: int | None, reason: str) -> list[tuple[str, bytes]]:
    """The headers of a poison message from ``topic[partition]@offset`` (unknown ones left out)."""
    headers = [("source-topic", topic.encode())]
    if partition is not None:
        headers.append(("source-partition", str(partition).encode()))
    if offset is not None:
        headers.append(("source-offset", str(offset).encode()))
    headers.append(("reason", reason.encode()[:MAX_REASON_BYTES]))
    return headers


class DeadLetter:
    """A poison message on its way to ``<p>.dlq``: the record as it was, with where it came from and why.

    ``record()`` is (key, value, headers) to produce now; ``settle(err)`` reads
    its delivery report: ``SENT``; ``RESEND`` (refused for good: produce
    ``record()`` again at once, now without its value); ``GIVEN_UP`` (even
    that was refused: the message stays only in its own topic); ``LATER``
    (the broker is away: produce ``record()`` again later). After ``SENT`` or
    ``GIVEN_UP`` the message's offset is done. The consumer runtime's
    ``dead_letter`` runs this state machine for every loop on it (the
    executor's intake, until it moves onto the runtime, runs it too).
    """

    SENT, RESEND, GIVEN_UP, LATER = "sent", "resend", "given_up", "later"
    __slots__ = ("topic", "partition", "offset", "key", "value", "reason", "stripped", "extra")

    def __init__(self, message: Any, reason: str, extra: Sequence[tuple[str, bytes]] = ()) -> None:
        self.topic, self.partition, self.offset = message.topic(), message.partition(), message.offset()
        self.key: bytes = message.key() or b""
        self.value: bytes = message.value() or b""
        self.reason = reason
        self.stripped = False
        self.extra = list(extra)  # more headers (a trigger's letters name it)

    def record(self) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
        """(key, value, headers) of the dead letter as it is to be sent now."""
        return (self.key, b"" if self.stripped else self.value,
                poison_headers(self.topic, self.partition, self.offset, self.reason) + self.extra)

    def settle(self, err: Any) -> str:
        """What a delivery report ``err`` (None, a ``KafkaError`` or ``KafkaException``) means for this letter."""
        from .kafka import is_permanent

        if err is None:
            return self.SENT
        if not is_permanent(err):
            return self.LATER
        if self.stripped:
            return self.GIVEN_UP
        self.stripped = True
        return self.RESEND

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"
