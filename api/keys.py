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

``KeyStore`` is one consumer thread per API process, ``assign()``-ed to
every partition of ``<p>.admin`` from the beginning (no group: every replica
keeps the full set), folding records into a dict. Revocation is bounded: the
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
import threading
import time
import uuid
from datetime import datetime

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition  # Consumer: type only

from taskstream.schemas import DecodeError, Settings, Topics, codec
from taskstream.schemas.events import ApiKey
from taskstream.schemas import kafka
from taskstream.schemas.kafka import consume_available

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


def new_key(role: str, name: str, producer: str, now: datetime, handlers: list[str] | None = None) -> tuple[str, ApiKey]:
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


class KeyStore:
    """Every ``ApiKey`` of ``<p>.admin``, kept current by a daemon thread."""

    def __init__(self, settings: Settings, *, connect_timeout: float = 2.0) -> None:
        self.settings = settings
        self.wire = codec.WireFormat.of(settings)
        self.topic = Topics(settings.prefix).admin
        self.max_staleness_s = settings.auth_api_key_max_staleness_s
        self._timeout = connect_timeout
        self._keys: dict[str, ApiKey] = {}
        self._positions: dict[int, int] = {}
        self._fresh_at: float | None = None  # monotonic time of the last confirmed read to the end
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.problem: str | None = "not started"

    def start(self) -> KeyStore:
        self._thread = threading.Thread(target=self._run, name="api-key-store", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

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

    # ---------------------------------------------------------- consumer

    def _run(self) -> None:
        consumer: Consumer | None = None
        next_check = 0.0
        backoff = 0.2
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = self._connect()
                    backoff = 0.2
                for msg in consume_available(consumer, 500, POLL_S):
                    self._handle(msg)
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + CHECK_S
                    self._check(consumer)
            except Exception as exc:  # never die: keys go stale (503), then come back
                self.problem = str(exc)
                log.warning("key store: %s (retrying in %.1fs)", exc, backoff)
                if consumer is not None:
                    consumer.close()
                    consumer = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        if consumer is not None:
            consumer.close()

    def _connect(self) -> Consumer:
        group = f"{self.settings.prefix}-api-keys-{uuid.uuid4().hex}"
        consumer = kafka.reader(self.settings, "taskstream-api-keys", group, {
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
        })
        try:
            meta = consumer.list_topics(timeout=self._timeout).topics.get(self.topic)
            if meta is None or meta.error is not None or not meta.partitions:
                raise KafkaException(f"topic {self.topic} does not exist (taskstream topics creates it)")
            self._positions = {}  # read again from the start: folding a record twice changes nothing
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in sorted(meta.partitions)])
        except Exception:
            consumer.close()
            raise
        return consumer

    def _handle(self, msg) -> None:
        if msg.error() is not None:
            if msg.error().fatal():
                raise KafkaException(msg.error())
            return
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

    def _check(self, consumer: Consumer) -> None:
        asked = time.monotonic()
        for tp in consumer.assignment():
            low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, tp.partition),
                                                       timeout=self._timeout, cached=False)
            if self._positions.get(tp.partition, low) < high:
                return  # records still to read: not fresh at this time
        self._fresh_at = asked
        self.problem = None
