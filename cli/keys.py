"""`taskstream keys create|list|revoke`: API keys as ``ApiKey`` records of the compacted ``<p>.admin``.

The work behind the click commands in ``main``: ``create_key`` writes a new
key's record (the key itself is returned to be printed once, never stored),
``revoke_key`` writes the record again with ``revoked_at``, ``list_keys``
reads the topic to its end through the API's own ``KeyStore``. Every write
is acknowledged before the command returns, so API replicas can tell
exactly when they have read it (``api.keys``).
"""

from __future__ import annotations

import getpass
import socket
from dataclasses import replace
from datetime import UTC, datetime

from taskstream.api.keys import KeyStore, new_key
from taskstream.schemas import BrokerUnavailable, Settings, Topics, catalogue, codec, kafka
from taskstream.schemas.events import ApiKey
from taskstream.schemas.kafka import ensure_topics


class KeysError(Exception):
    """A key command could not do its work (broker down, unknown key id): one line for the user."""


def producer_name() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli-{user}@{socket.gethostname()}"


#: How long a command goes on trying a broker that refuses the connection before it says so.
REFUSED_S = 1.0


def _reach(settings: Settings, timeout: float) -> None:
    """``KeysError`` at once (``REFUSED_S``) when the broker refuses the connection, after ``timeout`` otherwise."""
    try:
        kafka.wait_for_broker(settings, timeout, refused_s=REFUSED_S)
    except BrokerUnavailable as exc:
        raise KeysError(str(exc)) from None


def _write(settings: Settings, record: ApiKey, timeout: float) -> None:
    topic = Topics(settings.prefix).admin
    _reach(settings, timeout)
    try:
        ensure_topics(settings, [t for t in catalogue(settings) if t.name == topic], timeout=timeout)
    except BrokerUnavailable as exc:
        raise KeysError(str(exc)) from None
    producer = kafka.producer(settings, "taskstream-cli-keys")
    result: list = []
    producer.produce(topic, codec.WireFormat.of(settings).encode(record), record.key_id.encode(),
                     headers=codec.headers(record), on_delivery=lambda err, msg: result.append(err))
    producer.flush(timeout)
    if result != [None]:
        raise KeysError(f"{topic} did not acknowledge the key record: {result[0] if result else 'timed out'}")


def create_key(settings: Settings, role: str, name: str, handlers: list[str], timeout: float = 15.0,
               now: datetime | None = None) -> tuple[str, ApiKey]:
    """Store a new key; return it (to print once) and its record."""
    try:
        key, record = new_key(role, name, producer_name(), now or datetime.now(UTC), handlers)
    except ValueError as exc:
        raise KeysError(str(exc)) from None
    _write(settings, record, timeout)
    return key, record


def list_keys(settings: Settings, timeout: float = 15.0) -> list[ApiKey]:
    """Every key of ``<p>.admin`` (revoked ones too), oldest first."""
    _reach(settings, timeout)
    store = KeyStore(settings).start()
    try:
        if not store.wait_fresh(timeout):
            raise KeysError(f"could not read {store.topic} within {timeout:.0f}s: {store.problem}")
        return store.snapshot()
    finally:
        store.stop()


def revoke_key(settings: Settings, key_id: str, timeout: float = 15.0, now: datetime | None = None) -> ApiKey:
    """Revoke ``key_id`` for good; return its revoked record (a key revoked before stays as it was)."""
    current = {k.key_id: k for k in list_keys(settings, timeout)}.get(key_id)
    if current is None:
        raise KeysError(f"no API key with id {key_id!r} in {Topics(settings.prefix).admin} (see: taskstream keys list)")
    if current.revoked_at is not None:
        return current
    revoked = replace(current, revoked_at=now or datetime.now(UTC))
    _write(settings, revoked, timeout)
    return revoked
