"""API keys: how they look, how they are hashed, and the store every API replica folds from ``<p>.admin``.

A key is ``tsk_<key id>_<secret>``: ``tsk_`` so secret scanners and our own
``Authorization`` parsing can tell it from a JWT, a public 16-hex-digit key
id (the principal id of its requests, what ``keys list`` and ``keys revoke``
show), and 32 random bytes (``secrets.token_urlsafe``). ``taskstream keys
create`` prints the key once and writes an ``ApiKey`` record with the
SHA-256 of the whole key to the compacted topic ``<p>.admin``, keyed by key
id; ``keys revoke`` writes the same record with ``revoked_at`` set.

A plain SHA-256 is enough here, and a slow password hash would be wrong: a
key has 256 bits of entropy, so nobody can guess one from its hash however
fast the hash is, and a fast hash keeps the check of every request cheap.
Comparison is constant-time.

``KeyStore`` is one consumer thread per API process (a reader of the
consumer runtime, ``schemas.consumer``) assigned to every partition of
``<p>.admin`` from the beginning (no group: every replica keeps the full
set), folding records into a dict. Revocation is bounded: the
thread asks the broker for the topic's end offsets every ``CHECK_S`` and
notes the time of the last answer it had fully read up to; while that time
is older than ``auth_api_key_max_staleness_s``, ``lookup`` raises
``KeysUnavailable`` (the API answers 503), so a revoked key stops working at
most that long after ``keys revoke`` returned, and usually as soon as the
broker delivers the record (a waiting fetch is answered when data arrives).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from datetime import datetime

from taskstream.schemas import DecodeError, Settings, Topics, codec
from taskstream.schemas.consumer import BEGINNING, ConsumerRuntime, Hooks
from taskstream.schemas.events import ApiKey

log = logging.getLogger(__name__)

PREFIX = "tsk_"
ROLES = ("reader", "submitter", "operator", "admin")
_KEY = re.compile(r"^tsk_(?P<id>[0-9a-f]{16})_(?P<secret>[A-Za-z0-9_-]{43})$")
#: How often the store confirms with the broker that it has read ``<p>.admin`` to its end.
CHECK_S = 1.0
#: Longest single poll of the consumer thread: bounds how late it confirms (``CHECK_S``) and sees a stop.
POLL_S = 0.25


class KeysUnavailable(Exception):
    """The key store cannot vouch for its keys (not loaded yet, or out of touch with the broker too long)."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The key id of a well-formed key, else None."""
    m = _KEY.match(key)
    return m["id"] if m else None


def new_key(
    role: str, name: str, producer: str, now: datetime, handlers: list[str] | None = None
) -> tuple[str, ApiKey]:
    """A fresh key and the record to store for it (the key itself is not in the record)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    key_id = secrets.token_hex(8)
    key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    record = ApiKey(key_id=key_id, name=name, role=role, secret_hash=hash_key(key), created_at=now,
                    producer=producer, handlers=list(handlers or []))
    return key, record


def fold(keys: dict[str, ApiKey], record: ApiKey) -> None:
    """Apply ``record`` to ``keys`` (key id -> record): revocation is final."""
    old = keys.get(record.key_id)
    if old is not None and old.revoked_at is not None and record.revoked_at is None:
        return
    keys[record.key_id] = record


class KeyStore(Hooks):
    """Every ``ApiKey`` of ``<p>.admin``, kept current by a daemon thread (the hooks of a reader runtime)."""

    def __init__(self, settings: Settings, *, connect_timeout: float = 2.0) -> None:
        self.settings = settings
        self.wire = codec.WireFormat.of(settings)
        self.topic = Topics(settings.prefix).admin
        self.max_staleness_s = settings.auth_api_key_max_staleness_s
        self._timeout = connect_timeout
        self._keys: dict[str, ApiKey] = {}
        self._positions: dict[int, int] = {}
        self._fresh_at: float | None = None  # monotonic time of the last confirmed read to the end
        self._next_check = 0.0
        self.problem: str | None = "not started"
        self.runtime = ConsumerRuntime.reader(settings, self, client_id="taskstream-api-keys", poll_s=POLL_S,
                                              overrides={"enable.auto.offset.store": False,
                                                         "auto.offset.reset": "earliest"})

    def start(self) -> KeyStore:
        self.runtime.start_thread("api-key-store")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.runtime.stop_thread(timeout)

    # ------------------------------------------------------------- reads

    @property
    def fresh(self) -> bool:
        return self._fresh_at is not None and time.monotonic() - self._fresh_at <= self.max_staleness_s

    def wait_fresh(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.fresh:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def snapshot(self) -> list[ApiKey]:
        """Every key (revoked ones too), oldest first."""
        return sorted(self._keys.values(), key=lambda k: (k.created_at, k.key_id))

    def lookup(self, key: str) -> ApiKey | None:
        """The live record of ``key`` (right secret, not revoked), else None; ``KeysUnavailable`` when stale."""
        if not self.fresh:
            why = "not loaded yet" if self._fresh_at is None else (
                f"not confirmed for {time.monotonic() - self._fresh_at:.0f} s ({self.problem or 'broker unreachable'})")
            raise KeysUnavailable(f"API keys cannot be checked: {self.topic} {why}")
        key_id = key_id_of(key)
        record = self._keys.get(key_id) if key_id else None
        if record is None or record.revoked_at is not None:
            return None
        if not hmac.compare_digest(record.secret_hash, hash_key(key)):
            return None
        return record

    # ---------------------------------------------------------- hooks

    def on_connect(self, runtime: ConsumerRuntime) -> None:
        partitions = runtime.partitions(self.topic, self._timeout)
        self._positions = {}  # read again from the start: folding a record twice changes nothing
        self._next_check = 0.0
        runtime.assign({(self.topic, p): BEGINNING for p in partitions})

    def on_failure(self, runtime: ConsumerRuntime, exc: Exception) -> bool:
        self.problem = str(exc)  # never die: keys go stale (503), then come back
        return True

    def on_batch(self, runtime: ConsumerRuntime, records: list) -> None:
        for msg in records:
            self._handle(msg)

    def on_idle(self, runtime: ConsumerRuntime) -> None:
        if time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + CHECK_S
            self._check(runtime)

    def _handle(self, msg) -> None:
        self._positions[msg.partition()] = msg.offset() + 1
        if msg.value() is None:
            if msg.key():  # a tombstone of a key id: the key is gone
                self._keys.pop(msg.key().decode(errors="replace"), None)
            return
        try:
            record = self.wire.decode(msg.value())
        except DecodeError as exc:
            log.warning("key store: skipping an undecodable record at %s[%d]@%d: %s",
                        self.topic, msg.partition(), msg.offset(), exc)
            return
        if isinstance(record, ApiKey):
            fold(self._keys, record)

    def _check(self, runtime: ConsumerRuntime) -> None:
        asked = time.monotonic()
        for topic, partition in runtime.assignment():
            low, high = runtime.watermarks((topic, partition), timeout=self._timeout)
            if self._positions.get(partition, low) < high:
                return  # records still to read: not fresh at this time
        self._fresh_at = asked
        self.problem = None
