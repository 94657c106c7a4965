"""The processor's cache of decoded states (schemas/state_cache.py): a hit only for the bytes last seen, bounded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from taskstream.schemas.state_cache import DecodedStates


class Counting:
    """A decoder that records its calls: the value of ``raw`` is ``("v", raw)``."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def __call__(self, raw: bytes):
        self.calls.append(raw)
        return ("v", raw)


def test_the_bytes_last_written_are_not_decoded_again() -> None:
    decode = Counting()
    cache = DecodedStates(decode)
    value = ("v", b"s1")
    cache.put(b"k", b"s1", value)
    assert cache.decode(b"k", b"s1") is value
    assert decode.calls == [] and (cache.hits, cache.misses) == (1, 0)


def test_other_bytes_for_the_key_are_decoded_and_replace_what_was_held() -> None:
    decode = Counting()
    cache = DecodedStates(decode)
    cache.put(b"k", b"s1", ("v", b"s1"))
    assert cache.decode(b"k", b"s2") == ("v", b"s2")  # the table was written by someone else: a restore
    assert cache.decode(b"k", b"s2") == ("v", b"s2")
    assert decode.calls == [b"s2"] and len(cache) == 1 and cache.size_bytes == 2


def test_an_undecodable_record_is_not_remembered() -> None:
    def refuse(raw: bytes):
        raise ValueError("corrupt")

    cache = DecodedStates(refuse)
    for _ in range(2):
        try:
            cache.decode(b"k", b"bad")
        except ValueError:
            pass
    assert len(cache) == 0 and cache.misses == 2


def test_bounded_in_entries_and_bytes_least_recently_used_out_first() -> None:
    cache = DecodedStates(Counting(), max_entries=3, max_bytes=10)
    for k in (b"a", b"b", b"c"):
        cache.put(k, b"xx", k)
    cache.decode(b"a", b"xx")  # a is now the most recently used
    cache.put(b"d", b"xx", b"d")
    assert len(cache) == 3 and cache.decode(b"b", b"xx") == ("v", b"xx")  # b was dropped: decoded again
    cache.put(b"e", b"x" * 9, b"e")  # 9 bytes: everything else goes to stay within 10
    assert len(cache) == 1 and cache.size_bytes == 9
    cache.put(b"f", b"x" * 11, b"f")  # larger than the bound: not held at all
    assert cache.size_bytes == 9 and cache.decode(b"e", b"x" * 9) == b"e"


ops = st.lists(st.tuples(st.sampled_from(["write", "read", "other"]), st.sampled_from([b"a", b"b", b"c", b"d"]),
                         st.binary(min_size=1, max_size=4)), max_size=60)


@given(ops, st.integers(1, 4), st.integers(1, 12))
def test_a_read_always_gives_what_decoding_the_table_gives(steps, max_entries, max_bytes) -> None:
    """Whatever the processor writes (``put``) and whoever else writes the table (``other``), a read of a key
    gives the decode of the bytes the table holds now, and the bounds hold."""
    cache = DecodedStates(Counting(), max_entries=max_entries, max_bytes=max_bytes)
    table: dict[bytes, bytes] = {}
    for op, key, raw in steps:
        if op == "write":
            table[key] = raw
            cache.put(key, raw, ("v", raw))
        elif op == "other":
            table[key] = raw
        elif key in table:
            assert cache.decode(key, table[key]) == ("v", table[key])
        assert len(cache) <= max_entries and cache.size_bytes <= max_bytes
