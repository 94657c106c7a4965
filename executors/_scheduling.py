"""Which priority gets the next free executor slot: smooth weighted round-robin.

Pure and clock-free so it can be tested on its own. Among the priorities that
have a backlog, each grant goes to the one with the highest running credit
(credit += weight every round, the winner pays back the total weight), the
nginx "smooth weighted round-robin". With weights (6, 3, 1) and all three
levels backlogged, every 10 consecutive grants are exactly 6 high, 3 medium,
1 low, interleaved, and high gets the first grant; a level with no backlog
takes no part, so its share goes to the others (high alone gets every slot,
high and low share 6:1). A weight of 0 means "only when nothing else waits".
"""

from __future__ import annotations

from collections.abc import Sequence


class WeightedRoundRobin:
    def __init__(self, weights: Sequence[int]) -> None:
        if not weights or any(w < 0 for w in weights):
            raise ValueError(f"weights must be non-negative, got {list(weights)}")
        self.weights = list(weights)
        self._credit = [0] * len(weights)

    def pick(self, backlogged: Sequence[bool]) -> int | None:
        """Index of the level to serve next among those with ``backlogged[i]``, or None."""
        candidates = [i for i, b in enumerate(backlogged) if b]
        if not candidates:
            return None
        weighted = [i for i in candidates if self.weights[i] > 0]
        if not weighted:
            return candidates[0]  # only zero-weight levels wait: serve the most important
        total = 0
        for i in weighted:
            self._credit[i] += self.weights[i]
            total += self.weights[i]
        best = max(weighted, key=lambda i: (self._credit[i], -i))
        self._credit[best] -= total
        return best
