"""The commit tracker the executor and the relay share, and the dead-letter header contract."""

from __future__ import annotations

from types import SimpleNamespace

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from taskstream.schemas.offsets import (
    POISON_HEADERS,
    DeadLetter,
    PartitionOffsets,
    forget_failed_commits,
    poison_headers,
)


@given(st.lists(st.integers(0, 50), min_size=1, max_size=30, unique=True), st.randoms())
def test_position_is_one_past_the_highest_contiguous_done_offset(offsets: list[int], rnd) -> None:
    taken = sorted(offsets)
    tracker = PartitionOffsets()
    for o in taken:
        tracker.add(o)
    order = taken[:]
    rnd.shuffle(order)
    done: set[int] = set()
    for o in order:
        tracker.mark_done(o)
        done.add(o)
        prefix = 0
        while prefix < len(taken) and taken[prefix] in done:
            prefix += 1
        assert tracker.position == (taken[prefix - 1] + 1 if prefix else None)
    assert tracker.position == taken[-1] + 1 and not tracker.pending and not tracker.done


def test_an_offset_marked_done_twice_counts_once() -> None:
    """A batch settled part-way (``ConsumerRuntime.settle``) is marked done again when it returns."""
    tracker = PartitionOffsets()
    for o in range(5):
        tracker.add(o)
    for o in (0, 1, 2):
        tracker.mark_done(o)
    for o in range(5):
        tracker.mark_done(o)
    assert tracker.position == 5 and not tracker.pending and not tracker.done


def test_poison_headers_name_the_source_and_cut_the_reason() -> None:
    h = poison_headers("p.ready.high", 2, 17, "x" * 5000)
    assert [k for k, _ in h] == list(POISON_HEADERS)
    assert dict(h)["source-partition"] == b"2" and dict(h)["source-offset"] == b"17" and len(dict(h)["reason"]) == 1000
    assert [k for k, _ in poison_headers("p.events", None, None, "refused")] == ["source-topic", "reason"]


def test_committed_offsets_of_no_partitions_asks_nothing() -> None:
    # /stats on a prefix whose topics do not exist asked the broker with an empty list and answered 500
    from taskstream.schemas.kafka import committed_offsets

    assert committed_offsets(None, "g", [], 1.0) == {}


class _Message:
    def __init__(self, value: bytes | None) -> None:
        self._value = value

    def topic(self) -> str:
        return "p.ready.high"

    def partition(self) -> int:
        return 2

    def offset(self) -> int:
        return 17

    def key(self) -> bytes:
        return b"task-1"

    def value(self) -> bytes | None:
        return self._value


def test_a_dead_letter_is_resent_without_its_value_once_refused_for_good_then_given_up() -> None:
    letter = DeadLetter(_Message(b"poison"), "not avro")
    key, value, headers = letter.record()
    assert (key, value) == (b"task-1", b"poison") and dict(headers)["source-offset"] == b"17"
    too_large = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
    assert letter.settle(KafkaError(KafkaError._TRANSPORT)) == DeadLetter.LATER  # the broker is away: same record later
    assert letter.record()[1] == b"poison"
    assert letter.settle(too_large) == DeadLetter.RESEND
    assert letter.record()[1] == b"" and dict(letter.record()[2])["reason"] == b"not avro"
    assert letter.settle(KafkaException(too_large)) == DeadLetter.GIVEN_UP
    assert DeadLetter(_Message(None), "x").settle(None) == DeadLetter.SENT
    assert str(letter) == "p.ready.high[2]@17"


def test_decode_as_refuses_a_record_of_another_type() -> None:
    from datetime import UTC, datetime

    import pytest

    from taskstream.schemas import DecodeError, Heartbeat, ReadyTask, TaskCancelled, codec

    beat = Heartbeat(task_id="t", attempt=1, producer="ex", occurred_at=datetime(2024, 1, 1, tzinfo=UTC))
    assert codec.SINGLE_OBJECT.decode_as(codec.encode(beat), Heartbeat) == beat
    with pytest.raises(DecodeError, match="expected ReadyTask or TaskCancelled, got Heartbeat"):
        codec.SINGLE_OBJECT.decode_as(codec.encode(beat), ReadyTask, TaskCancelled)


def test_a_refused_commit_is_sent_again_and_nothing_to_commit_is_no_failure() -> None:
    offsets = {("t", p): PartitionOffsets() for p in range(3)}
    for o in offsets.values():
        o.position = o.committed = 7  # what _commit sent
    # what on_commit gets: TopicPartitions, each with its error (read-only on the real class)
    refused = SimpleNamespace(topic="t", partition=1, offset=7, error=KafkaError(KafkaError.ILLEGAL_GENERATION))
    ok = TopicPartition("t", 0, 7)
    assert forget_failed_commits(None, [ok, refused], offsets) == [("t", 1)]
    assert [offsets[("t", p)].committed for p in range(3)] == [7, None, 7]
    assert forget_failed_commits(KafkaError(KafkaError._NO_OFFSET), [ok], offsets) == []
    assert forget_failed_commits(KafkaError(KafkaError.REBALANCE_IN_PROGRESS), [ok, TopicPartition("t", 9, 1)],
                                 offsets) == [("t", 0), ("t", 9)]  # a partition no longer tracked is skipped
    assert offsets[("t", 0)].committed is None and ("t", 9) not in offsets
