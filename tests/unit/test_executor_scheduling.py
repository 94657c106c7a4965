"""The executor's priority arithmetic: smooth weighted round-robin over backlogged levels."""

from __future__ import annotations

from collections import Counter

import pytest

from taskstream.executors._scheduling import WeightedRoundRobin


def grants(weights, backlogged, n):
    wrr = WeightedRoundRobin(weights)
    return [wrr.pick(backlogged) for _ in range(n)]


def test_all_backlogged_every_ten_grants_are_6_3_1():
    seq = grants((6, 3, 1), [True, True, True], 100)
    assert seq[0] == 0  # high first
    for start in range(0, 100, 10):
        assert Counter(seq[start:start + 10]) == {0: 6, 1: 3, 2: 1}


def test_low_is_not_starved_and_high_comes_first_among_two():
    seq = grants((6, 3, 1), [True, False, True], 14)
    assert seq[0] == 0 and Counter(seq) == {0: 12, 2: 2}


def test_only_backlogged_levels_are_served():
    assert grants((6, 3, 1), [False, False, True], 5) == [2] * 5
    assert grants((6, 3, 1), [False, False, False], 1) == [None]


def test_zero_weight_served_only_when_alone():
    assert set(grants((1, 0, 0), [True, True, True], 10)) == {0}
    assert grants((1, 0, 0), [False, True, True], 2) == [1, 1]


def test_negative_weights_rejected():
    with pytest.raises(ValueError):
        WeightedRoundRobin((1, -1, 1))
