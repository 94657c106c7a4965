"""Kafka clients, made in one place from ``Settings`` (confluent-kafka).

Every producer, consumer and admin client of the program is built by
``producer``, ``consumer``, ``reader`` or ``admin`` here (``AsyncProducer``
wraps ``producer``), so every one gets the common config (bootstrap servers,
client id, logger) and the security config of ``Settings`` (TLS, SASL, the
``kafka_config`` passthrough), which no override can drop. A client that
cannot be created (a bad property, an unreadable CA file) is
``BrokerUnavailable``, with secret values blanked out of the message.

The API and the executors produce through ``AsyncProducer``: produce is
asynchronous, a daemon thread polls the client for delivery reports and
resolves asyncio futures, so nothing blocks an event loop. Library errors
become ``BrokerUnavailable`` here, at the seam.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable

from collections.abc import Mapping

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from .errors import BrokerUnavailable, RecordRefused
from .limits import MAX_RECORD_BYTES
from .settings import Settings
from .topics import TopicSpec

log = logging.getLogger(__name__)


#: librdkafka's own log lines go through Python logging under this name
#: (instead of raw ``%3|...|FAIL|...`` lines on stderr), so commands can quiet them.
LIBRDKAFKA_LOG = logging.getLogger("taskstream.librdkafka")

#: Key of the tombstone appended to a partition before reading it "to the end":
#: a reader reads up to its own marker, which needs no end offset (the embedded
#: broker under-reports those, BROKER.md). The processor writes them to
#: ``<p>.state`` before it rebuilds a table, ``state rebuild`` and ``dlq list``
#: to the topics they read. Readers of those topics skip it.
WATERMARK_MARKER_KEY = b"__taskstream_marker__"
#: On the embedded broker a member leaves its group only once the group has been stable this long (close_member).
STABLE_BEFORE_LEAVE_S = 1.0


def security_config(settings: Settings) -> dict[str, str]:
    """The librdkafka security properties of ``settings`` (empty when none are set): protocol, SASL, TLS files,
    then the ``kafka_config`` passthrough (ssl.* / sasl.* only), which wins over the named settings."""
    try:
        password = settings.secret("kafka_sasl_password")
        key_password = settings.secret("kafka_ssl_key_password")
    except ValueError as exc:
        raise BrokerUnavailable(f"Kafka security settings: {exc}") from None
    named = {
        "security.protocol": settings.kafka_security_protocol,
        "sasl.mechanism": settings.kafka_sasl_mechanism,
        "sasl.username": settings.kafka_sasl_username,
        "sasl.password": password,
        "ssl.ca.location": settings.kafka_ssl_ca_location,
        "ssl.certificate.location": settings.kafka_ssl_certificate_location,
        "ssl.key.location": settings.kafka_ssl_key_location,
        "ssl.key.password": key_password,
    }
    out = {k: str(v) for k, v in named.items() if v is not None}
    out.update((k, v.get_secret_value()) for k, v in settings.kafka_config.items())
    return out


#: Properties whose values are secrets: blanked out of every message that could echo them.
SECRET_PROPERTIES = ("sasl.password", "ssl.key.password", "sasl.oauthbearer.client.secret", "ssl.keystore.password")


def common_config(settings: Settings, client_id: str) -> dict:
    """What every client gets: bootstrap servers, client id, the logger and the security properties."""
    return {"bootstrap.servers": settings.bootstrap_servers, "client.id": client_id, "logger": LIBRDKAFKA_LOG,
            **security_config(settings)}


#: The client classes the factory instantiates, by kind. Nothing else in the program calls these constructors
#: (tests/unit/test_kafka_factory.py checks it); a test may wrap them to see every config the program builds.
CLIENT_CLASSES: dict[str, type] = {"producer": Producer, "consumer": Consumer, "admin": AdminClient}


def _build(kind: str, settings: Settings, config: dict):
    config = {**config, **security_config(settings)}  # overrides cannot drop a security property
    try:
        return CLIENT_CLASSES[kind](config)
    except KafkaException as exc:
        raise BrokerUnavailable(f"could not create Kafka {kind} {config.get('client.id')}: "
                                f"{redact(str(exc), config)}") from None


def redact(text: str, config: Mapping) -> str:
    """``text`` with the value of every secret property of ``config`` (and of the passthrough) blanked out."""
    for key, value in config.items():
        if value and isinstance(value, str) and (key in SECRET_PROPERTIES or "password" in key or "secret" in key):
            text = text.replace(value, "**********")
    return text


def producer(settings: Settings, client_id: str, overrides: Mapping | None = None) -> Producer:
    """An idempotent, acks=all producer (``producer_config``) with ``overrides`` on top."""
    return _build("producer", settings, {**producer_config(settings, client_id), **(overrides or {})})


def consumer(settings: Settings, client_id: str, group_id: str, overrides: Mapping | None = None) -> Consumer:
    """A consumer-group member (``consumer_config``: manual commits, cooperative-sticky) with ``overrides``."""
    return _build("consumer", settings, {**consumer_config(settings, group_id, client_id), **(overrides or {})})


def reader(settings: Settings, client_id: str, group_id: str, overrides: Mapping | None = None) -> Consumer:
    """A consumer for ``assign()``: the common config, ``group.id`` (librdkafka wants one; it is joined only if
    the caller subscribes) and no auto commit, with ``overrides``."""
    return _build("consumer", settings, {**common_config(settings, client_id), "group.id": group_id,
                                         "enable.auto.commit": False, **(overrides or {})})


def producer_config(settings: Settings, client_id: str) -> dict:
    return {
        **common_config(settings, client_id),
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": settings.producer_linger_ms,
        "compression.type": "none",
        "message.max.bytes": MAX_RECORD_BYTES,
        # Java-compatible key hashing (as the Java client and Kafka tools use): a task's
        # messages land in the same partition whoever produces them.
        "partitioner": "murmur2_random",
    }


#: A producer config that sends every record alone (exact end offsets on the embedded broker without EndMarks).
ONE_PER_BATCH = {"batch.num.messages": 1}


#: Key of the tombstone ``EndMarks`` appends to keep end offsets exact on the embedded broker (no meaning beyond it).
END_MARKER_KEY = b"__taskstream_end__"
MARKER_KEYS = frozenset({WATERMARK_MARKER_KEY, END_MARKER_KEY})


def is_marker(msg) -> bool:
    """Whether a consumed record is one of our markers (a read or an end marker: a tombstone under one of
    ``MARKER_KEYS``; no event is a tombstone): readers skip these."""
    return msg.key() in MARKER_KEYS and not msg.value()


def is_end_marker(msg) -> bool:
    return msg.key() == END_MARKER_KEY and not msg.value()


class EndMarks:
    """Keeps the embedded broker's end offsets exact while producers batch (docs/decisions/0001).

    That broker reports a partition's end as the base offset of its last batch
    + 1; one record alone after a batch makes it exact again. A producer notes
    every record it wrote (``wrote``, from its delivery callback); once it has
    been quiet for ``quiet_s``, ``write`` appends one marker tombstone
    (``END_MARKER_KEY``) to each partition written since. So end
    offsets are exact whenever the producers are at rest, and at most one
    batch short while they write. Off (every call a no-op) on Kafka/Redpanda.
    Thread-safe; ``write`` produces without waiting.
    """

    QUIET_S = 0.02

    def __init__(self, enabled: bool, quiet_s: float = QUIET_S) -> None:
        self.enabled = enabled
        self.quiet_s = quiet_s
        self._dirty: set[tuple[str, int]] = set()
        self._last = 0.0
        self._lock = threading.Lock()

    def wrote(self, msg) -> None:
        if self.enabled and msg.key() not in MARKER_KEYS:
            with self._lock:
                self._dirty.add((msg.topic(), msg.partition()))
                self._last = time.monotonic()

    def due(self) -> bool:
        return bool(self._dirty) and time.monotonic() - self._last >= self.quiet_s

    def write(self, producer: Producer) -> int:
        """Append a marker to every partition written since the last call; how many were produced."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        for topic, partition in dirty:
            try:
                producer.produce(topic, None, END_MARKER_KEY, partition=partition, on_delivery=self._marked)
            except (BufferError, KafkaException) as exc:
                log.debug("end marker for %s[%d] not produced, again later: %s", topic, partition, exc)
                self._again(topic, partition)
        return len(dirty)

    def _marked(self, err, msg) -> None:
        if err is not None:
            self._again(msg.topic(), msg.partition())

    def _again(self, topic: str, partition: int) -> None:
        with self._lock:
            self._dirty.add((topic, partition))
            self._last = time.monotonic()


#: Produce errors that no retry can mend: the record itself is refused. A loop that meets one dead-letters what it
#: could not write and goes on; any other error (the broker is away, a timeout) is worth waiting out.
PERMANENT_PRODUCE_ERRORS = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_RECORD,
    KafkaError.INVALID_MSG_SIZE,
})


def is_permanent(err: KafkaError | BaseException | None) -> bool:
    """Whether a produce error refuses the record for good (see ``PERMANENT_PRODUCE_ERRORS``)."""
    if isinstance(err, KafkaException) and err.args and isinstance(err.args[0], KafkaError):
        err = err.args[0]
    return isinstance(err, KafkaError) and err.code() in PERMANENT_PRODUCE_ERRORS


def consumer_config(settings: Settings, group_id: str, client_id: str) -> dict:
    return {
        **common_config(settings, client_id),
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": max(500, settings.session_timeout_ms // 3),
        "partition.assignment.strategy": "cooperative-sticky",
        "fetch.wait.max.ms": settings.fetch_wait_max_ms,
    }


def admin(settings: Settings, client_id: str = "taskstream-admin") -> AdminClient:
    return _build("admin", settings, common_config(settings, client_id))


def wait_for_broker(settings: Settings, timeout: float = 30.0) -> None:
    """Block until the cluster answers a metadata request, or raise ``BrokerUnavailable``."""
    client = admin(settings)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            client.list_topics(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            return
        except KafkaException as exc:
            last = exc
            time.sleep(0.1)
    raise BrokerUnavailable(f"no Kafka broker answered at {settings.bootstrap_servers} within {timeout:.0f}s: {last}")


def ensure_topics(settings: Settings, specs: Iterable[TopicSpec], timeout: float = 30.0) -> list[str]:
    """Create missing topics; return problems with existing ones (wrong partition count).

    Idempotent: existing topics are left alone and reported if they differ.
    """
    client = admin(settings)
    specs = list(specs)
    try:
        existing = client.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise BrokerUnavailable(str(exc)) from exc
    problems = []
    missing = []
    for spec in specs:
        meta = existing.get(spec.name)
        if meta is None:
            missing.append(NewTopic(spec.name, spec.partitions, settings.replication_factor, config=spec.config))
        elif len(meta.partitions) != spec.partitions:
            problems.append(f"topic {spec.name} has {len(meta.partitions)} partitions, expected {spec.partitions}")
    if missing:
        for name, fut in client.create_topics(missing, operation_timeout=timeout).items():
            try:
                fut.result(timeout)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise BrokerUnavailable(f"could not create topic {name}: {exc}") from exc
        _await_metadata(client, [t.topic for t in missing], timeout)
    return problems


def _await_metadata(client: AdminClient, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        topics = client.list_topics(timeout=timeout).topics
        if all(n in topics and topics[n].partitions for n in names):
            return
        time.sleep(0.05)
    raise BrokerUnavailable(f"topics {names} not visible after creation")


class AsyncProducer:
    """confluent-kafka producer whose ``send`` is awaitable (acked by the broker)."""

    def __init__(self, settings: Settings, client_id: str, **overrides) -> None:
        self._producer = producer(settings, client_id, overrides)
        self.marks = EndMarks(settings.embedded_broker)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._poll_loop, name=f"{client_id}-producer-poll", daemon=True)
        self._thread.start()

    def _poll_loop(self) -> None:
        while not self._closed.is_set():
            try:
                self._producer.poll(0.01 if self.marks._dirty else 0.05)
                if self.marks.due():
                    self.marks.write(self._producer)
            except Exception:  # a delivery callback that raised must not end every later delivery report
                log.exception("producer poll: a delivery callback failed")

    def produce(self, topic: str, key: str | bytes, value: bytes, headers=None, on_delivery=None) -> None:
        """Fire and forget (with an optional delivery callback run on the poll thread)."""
        marks, then = self.marks, on_delivery

        def on_delivery(err, msg):
            if err is None:
                marks.wrote(msg)
            if then is not None:
                then(err, msg)

        deadline = time.monotonic() + 10.0
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery)
                return
            except BufferError as exc:  # the local queue is full: wait for deliveries to make room
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(f"producer queue full for 10 s: {exc}") from exc
                time.sleep(0.01)
            except KafkaException as exc:
                raise (RecordRefused if is_permanent(exc) else BrokerUnavailable)(str(exc)) from exc

    def send(self, topic: str, key: str | bytes, value: bytes, headers=None) -> asyncio.Future:
        """Produce and return a future that resolves when the broker acknowledged the record."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def done(err, msg):
            if err is not None:
                error = RecordRefused if is_permanent(err) else BrokerUnavailable
                loop.call_soon_threadsafe(_set_exception, fut, error(f"produce to {topic} failed: {err.str()}"))
            else:
                loop.call_soon_threadsafe(_set_result, fut, msg)

        self.produce(topic, key, value, headers, done)
        return fut

    def flush(self, timeout: float = 10.0) -> int:
        return self._producer.flush(timeout)

    def close(self, timeout: float = 10.0) -> int:
        remaining = self._producer.flush(timeout)
        if self.marks.write(self._producer):
            remaining = self._producer.flush(timeout)
        self._closed.set()
        self._thread.join(timeout=2)
        return remaining


def async_producer(settings: Settings, client_id: str, overrides: Mapping | None = None) -> AsyncProducer:
    """An ``AsyncProducer`` (awaitable sends) over ``producer(settings, client_id, overrides)``."""
    return AsyncProducer(settings, client_id, **(overrides or {}))


def _set_result(fut: asyncio.Future, value) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future, exc: Exception) -> None:
    if not fut.done():
        fut.set_exception(exc)


def consume_available(consumer, max_messages: int, timeout: float) -> list:
    """Wait up to ``timeout`` for one message, then take whatever else is already here.

    ``Consumer.consume(n, timeout)`` waits until it has ``n`` messages or the
    timeout passed, which puts the whole timeout on the latency of a lone
    message; this returns as soon as there is something to do.
    """
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(max_messages - 1, 0)] if max_messages > 1 else [first]


def write_markers(producer: Producer, topic: str, partitions: list[int], timeout: float = 30.0) -> dict[int, int]:
    """Append a marker tombstone to each partition; return their offsets once acknowledged."""
    offsets: dict[int, int] = {}
    errors: list = []

    def done(err, msg):
        if err is None:
            offsets[msg.partition()] = msg.offset()
        else:
            errors.append(err)

    for p in partitions:
        producer.produce(topic, None, WATERMARK_MARKER_KEY, partition=p, on_delivery=done)
    producer.flush(timeout)
    if errors or len(offsets) != len(partitions):
        raise BrokerUnavailable(f"could not write markers to {topic}: {errors[:3]}")
    return offsets


def committed_offsets(client: AdminClient, group: str, tps: list[TopicPartition],
                      timeout: float) -> dict[tuple[str, int], int]:
    """The offsets ``group`` committed for ``tps``, keyed (topic, partition); partitions never committed are left
    out. Raises ``KafkaException`` or ``TimeoutError`` (callers turn them into their own errors)."""
    if not tps:  # nothing to ask (the topics do not exist): the admin client would refuse an empty request
        return {}
    request = ConsumerGroupTopicPartitions(group, tps)
    result = client.list_consumer_group_offsets([request], request_timeout=timeout)[group].result(timeout)
    return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions if tp.error is None and tp.offset >= 0}


def partition_lag(committed: int | None, low: int, high: int) -> int:
    """Records of a partition a group has still to read: its end minus its committed offset. A partition it never
    committed is read from the beginning (``auto.offset.reset=earliest``), so every record still held counts."""
    return max(0, high - (committed if committed is not None else low))


def close_member(consumer, joined: threading.Event, settings: Settings, group: str) -> None:
    """Close a consumer-group member; on the embedded broker, first let a join in progress finish.

    Tansu breaks a group when a member leaves it while a join is in progress
    (docs/decisions/0006, with the measurements). So on the embedded broker a member polls
    until its first assignment (``joined``, set by its ``on_assign``, also
    for an empty one), then until the coordinator has described the group
    as stable for ``STABLE_BEFORE_LEAVE_S`` (a member that has just started
    joining may not have reached the coordinator yet), for at most three
    session timeouts in all, then leaves. Records polled meanwhile are
    dropped uncommitted: the partition's next owner reads them again. The
    wait narrows the race; a join starting between the last check and the
    LeaveGroup still hits the fault. Kafka and Redpanda take a LeaveGroup at
    any moment: there the member leaves at once.
    """
    if not settings.embedded_broker:
        consumer.close()
        return
    deadline = time.monotonic() + 3 * settings.session_timeout_ms / 1000
    try:
        while not joined.is_set() and time.monotonic() < deadline:
            consumer.poll(0.1)
        client = admin(settings)
        stable_since = None
        while time.monotonic() < deadline:
            state = _group_state(client, group)
            if state == "down":
                break
            if state not in ("stable", "empty"):
                stable_since = None
            elif stable_since is None:
                stable_since = time.monotonic()
            elif time.monotonic() - stable_since >= STABLE_BEFORE_LEAVE_S:
                break
            consumer.poll(0.1)
    except (KafkaException, RuntimeError) as exc:  # a broker that is down: leave as it can
        LIBRDKAFKA_LOG.debug("join not finished before close: %s", exc)
    consumer.close()


def _group_state(client: AdminClient, group: str) -> str:
    """The coordinator's word for ``group`` (the embedded broker says "unknown" while it rebalances);
    "down" when it does not answer."""
    described = group_states(client, [group], 2.0)[group]
    return described[0] if described is not None else "down"


def group_states(client: AdminClient, groups: list[str], timeout: float) -> dict[str, tuple[str, int] | None]:
    """(state in lower case, member count) of each group as DescribeConsumerGroups reports it; None for a
    group the broker did not describe (down, timed out, an error)."""
    out: dict[str, tuple[str, int] | None] = {}
    for group, fut in client.describe_consumer_groups(groups, request_timeout=timeout).items():
        try:
            d = fut.result(timeout + 1)
            out[group] = (d.state.name.lower(), len(d.members))
        except (KafkaException, TimeoutError) as exc:
            LIBRDKAFKA_LOG.debug("group %s not described: %s", group, exc)
            out[group] = None
    return out
