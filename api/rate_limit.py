"""Token buckets per principal: what ``auth.AuthMiddleware`` charges every request to.

Buckets are keyed by principal; an anonymous caller's by its client
address without the port (``client_address``), over HTTP and gRPC alike, so
a new connection per request does not get a new bucket.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens a
second; a request costs one token, a ``tasks:batch`` or workflow request
one per task (``auth.charge``). A request is let through while the bucket
holds at least its cost, or is full (so a request dearer than the whole
burst still passes, once, and leaves the bucket in debt that refills at
``rate``): the long-run rate is ``rate`` either way. Refused requests take
nothing.

The answer carries the IETF draft headers (draft-ietf-httpapi-ratelimit-headers,
the three-field form most clients read): ``RateLimit-Limit`` (the burst),
``RateLimit-Remaining`` (whole tokens left), ``RateLimit-Reset`` (seconds
until the bucket is full again), and on a 429 ``Retry-After`` (seconds until
the refused request would pass).

Written by hand rather than with the ``limits`` library: ``limits`` offers
fixed, moving and sliding windows but no token bucket, and its moving window
keeps one timestamp per unit of cost (1,000 for a full batch). Buckets live
in this process: with N API replicas behind a balancer a principal gets up
to N times its limit. At most ``max_buckets`` are kept; the one unused for
longest goes first (it has refilled, so forgetting it changes nothing).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass


def client_address(peer: str) -> str:
    """The address of a client without its port: ``"ipv4:10.0.0.7:51234"`` (gRPC's peer form),
    ``"ipv6:[::1]:51234"``, ``"ipv6:%5B::1%5D:51234"`` and ``"10.0.0.7:51234"`` become ``"10.0.0.7"`` or
    ``"::1"``; a bare host (what an ASGI server gives) or ``"unix:/path"`` is returned as it is."""
    kind, sep, rest = peer.partition(":")
    if sep and kind in ("ipv4", "ipv6"):
        peer = rest
    elif kind == "unix" and sep:
        return peer
    peer = peer.replace("%5B", "[").replace("%5D", "]")
    if peer.startswith("["):  # [v6]:port
        return peer[1:peer.index("]")] if "]" in peer else peer[1:]
    if peer.count(":") == 1:  # v4:port or name:port (a bare IPv6 address has more colons)
        return peer.rsplit(":", 1)[0]
    return peer


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int
    retry_after_s: int = 0

    def headers(self) -> dict[str, str]:
        out = {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(self.remaining),
               "RateLimit-Reset": str(self.reset_s)}
        if not self.allowed:
            out["Retry-After"] = str(self.retry_after_s)
        return out


class TokenBuckets:
    """Thread-safe token buckets keyed by principal (or client address)."""

    def __init__(self, max_buckets: int = 10_000, clock=time.monotonic) -> None:
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._max = max_buckets
        self._clock = clock
        self._lock = threading.Lock()

    def take(self, key: str, rate: float, burst: int, cost: int = 1) -> Decision:
        """Charge ``cost`` tokens to ``key``'s bucket if it has them; say so and what is left."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(key, (float(burst), now))
            tokens = min(float(burst), tokens + (now - at) * rate)
            allowed = tokens + 1e-9 >= min(cost, burst)  # float refill: traffic exactly at the rate passes
            if allowed:
                tokens -= cost
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        remaining = max(0, math.floor(tokens))
        reset = math.ceil((burst - tokens) / rate) if rate > 0 else 0
        retry = 0 if allowed else max(1, math.ceil((min(cost, burst) - tokens) / rate)) if rate > 0 else 3600
        return Decision(allowed, burst, remaining, max(0, reset), retry)
