"""Streams that outlive their credential: an SSE watch or a gRPC stream checks its caller's credential again while
it runs, and ends when the credential no longer admits the caller.

A request is authenticated once, when it starts (``auth``); a watch may stay
open for hours. ``while_admitted`` wraps the stream's items and, at least
every ``RECHECK_S`` seconds, authenticates the same header values again and
authorizes the same role: a revoked API key (as soon as the API's key store
has read the revocation), an expired JWT, or a key store staler than
``auth_api_key_max_staleness_s`` ends the stream with the ``AuthError`` the
check raised (the SSE route sends it as an ``event: error`` problem, gRPC as
UNAUTHENTICATED / PERMISSION_DENIED / UNAVAILABLE). So a stream ends within
``RECHECK_S`` of the moment a new request with the same credential would be
refused, which itself is within the staleness bound of a revocation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TypeVar

from .auth import Authenticator, Principal, Role, authorize

T = TypeVar("T")

#: Longest time a stream runs on a credential it has not checked again.
RECHECK_S = 1.0


async def _admit(authenticator: Authenticator, role: Role, authorization: str | None,
                 api_key: str | None) -> Principal:
    if authenticator.blocking:
        who = await asyncio.to_thread(authenticator.authenticate, authorization, api_key)
    else:
        who = authenticator.authenticate(authorization, api_key)
    authorize(who, role)
    return who


async def while_admitted(items: AsyncIterator[T], authenticator: Authenticator, role: Role,
                         authorization: str | None, api_key: str | None,
                         every_s: float = RECHECK_S) -> AsyncIterator[T]:
    """``items`` as long as ``authorization`` / ``api_key`` still authenticate and hold ``role``.

    The credential is checked again whenever ``every_s`` seconds have passed
    since the last check, whether items flow or not; a failed check raises
    its ``AuthError`` (``Unauthenticated``, ``Forbidden``, ``AuthUnavailable``)
    after closing ``items``. With authentication off nothing is checked.
    """
    if not authenticator.enabled:
        async for item in items:
            yield item
        return
    it = aiter(items)
    pending: asyncio.Future[T] | None = None
    next_check = time.monotonic() + every_s
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(it))
            done, _ = await asyncio.wait({pending}, timeout=max(0.0, next_check - time.monotonic()))
            if time.monotonic() >= next_check:
                await _admit(authenticator, role, authorization, api_key)
                next_check = time.monotonic() + every_s
            if not done:
                continue
            finished, pending = pending, None
            try:
                item = finished.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # its outcome no longer matters
                await pending
        close = getattr(it, "aclose", None)
        if close is not None:
            await close()


__all__ = ["RECHECK_S", "while_admitted"]
