"""The commit tracker the executor and the relay share, and the dead-letter header contract."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from taskstream.schemas.offsets import POISON_HEADERS, PartitionOffsets, poison_headers


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


def test_poison_headers_name_the_source_and_cut_the_reason() -> None:
    h = poison_headers("p.ready.high", 2, 17, "x" * 5000)
    assert [k for k, _ in h] == list(POISON_HEADERS)
    assert dict(h)["source-partition"] == b"2" and dict(h)["source-offset"] == b"17" and len(dict(h)["reason"]) == 1000
    assert [k for k, _ in poison_headers("p.events", None, None, "refused")] == ["source-topic", "reason"]


def test_committed_offsets_of_no_partitions_asks_nothing() -> None:
    # /stats on a prefix whose topics do not exist asked the broker with an empty list and answered 500
    from taskstream.schemas.kafka import committed_offsets

    assert committed_offsets(None, "g", [], 1.0) == {}
