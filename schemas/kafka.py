"""Kafka clients, made in one place from ``Settings`` (confluent-kafka).

Every producer, consumer and admin client of the program is built by
``producer``, ``consumer``, ``reader`` or ``admin`` here (``AsyncProducer``
wraps ``producer``), so every one gets the common config (bootstrap servers,
client id, logger) and the security config of ``Settings`` (TLS, SASL, the
``kafka_config`` passthrough), which no override can drop. A client that
cannot be created (a bad property, an unreadable CA file) is
``BrokerUnavailable``, with secret values blanked out of the message.

Every producer is a ``RecoveringProducer``: a librdkafka client that hit a
fatal error (it refuses every later record for good) is replaced by a new
one with the same config, and what the old one held fails back to its
senders (docs/decisions/0015-recovering-clients.md). The API and the
executors produce through ``AsyncProducer``: produce is asynchronous, a
daemon thread polls the client for delivery reports and resolves asyncio
futures, so nothing blocks an event loop. Library errors become
``BrokerUnavailable`` here, at the seam; ``outcome_unknown`` tells a failed
delivery the broker may have written anyway.

A component configured for TLS or SASL calls ``check_security`` first:
refused credentials or an untrusted broker certificate are
``SecurityRefused`` at once, worded by ``security_problem``.
``apply_acls`` and ``cluster_acls`` write and read the ACLs that
``schemas.acls`` derives (`taskstream acls`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    OffsetSpec,
    ResourcePatternType,
    ResourceType,
)

from .acls import Acl, Operation, Pattern, ResourceKind
from .codec import RecordHeaders
from .errors import BrokerUnavailable, RecordRefused, SecurityRefused, TopicMismatch, WriteOutcomeUnknown
from .limits import MAX_RECORD_BYTES
from .settings import Settings
from .topics import TopicSpec

log = logging.getLogger(__name__)

#: Record headers as the clients take them, and a produce's delivery report (error or None, the message).
Headers = RecordHeaders | dict[str, str | bytes | None]
DeliveryCallback = Callable[[KafkaError | None, Message], None]


#: librdkafka's own log lines go through Python logging under this name
#: (instead of raw ``%3|...|FAIL|...`` lines on stderr), so commands can quiet them.
LIBRDKAFKA_LOG = logging.getLogger("taskstream.librdkafka")


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


def common_config(settings: Settings, client_id: str) -> dict[str, Any]:
    """What every client gets: bootstrap servers, client id, the logger and the security properties."""
    return {"bootstrap.servers": settings.bootstrap_servers, "client.id": client_id, "logger": LIBRDKAFKA_LOG,
            "socket.timeout.ms": settings.request_timeout_ms, **security_config(settings)}


#: The client classes the factory instantiates, by kind. Nothing else in the program calls these constructors
#: (tests/unit/test_kafka_factory.py checks it); a test may wrap them to see every config the program builds.
CLIENT_CLASSES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "producer": Producer, "consumer": Consumer, "admin": AdminClient}


def _build(kind: str, settings: Settings, config: Mapping[str, Any]) -> Any:
    """A client of ``CLIENT_CLASSES[kind]`` (Any: the caller names the class it asked for)."""
    config = {**config, **security_config(settings)}  # overrides cannot drop a security property
    try:
        return CLIENT_CLASSES[kind](config)
    except KafkaException as exc:
        raise BrokerUnavailable(f"could not create Kafka {kind} {config.get('client.id')}: "
                                f"{redact(str(exc), config)}") from None


def redact(text: str, config: Mapping[str, Any]) -> str:
    """``text`` with the value of every secret property of ``config`` (and of the passthrough) blanked out."""
    for key, value in config.items():
        if value and isinstance(value, str) and (key in SECRET_PROPERTIES or "password" in key or "secret" in key):
            text = text.replace(value, "**********")
    return text


#: What every producer keeps whatever its overrides say: no record is lost or written twice by a retry.
DURABLE_PRODUCER = {"acks": "all", "enable.idempotence": True}
#: What every consumer and reader of ours reads: committed records only. The processor writes in transactions
#: (docs/decisions/0024-exactly-once-processing.md); a record of a transaction that was aborted, or is still open,
#: is never delivered, so no reader acts on an output a crashed processor will write again.
READ_COMMITTED = {"isolation.level": "read_committed"}


def producer(settings: Settings, client_id: str, overrides: Mapping[str, Any] | None = None) -> RecoveringProducer:
    """An idempotent, acks=all producer (``producer_config``) with ``overrides`` on top (which cannot change
    ``DURABLE_PRODUCER``), rebuilt after a fatal error (``RecoveringProducer``)."""
    return RecoveringProducer(settings, {**producer_config(settings, client_id), **(overrides or {}),
                                         **DURABLE_PRODUCER})


def transactional_producer(settings: Settings, client_id: str, transactional_id: str,
                           timeout_ms: int) -> RecoveringProducer:
    """A ``producer`` that writes in transactions under ``transactional_id`` (fenced at creation, and again by
    every client rebuilt after a fatal error); ``timeout_ms`` is ``transaction.timeout.ms``: how long the broker
    lets one transaction stay open before it aborts it (and so how long a crashed owner's open transaction holds
    back ``read_committed`` readers of the partitions it wrote to)."""
    return producer(settings, client_id, {"transactional.id": transactional_id, "transaction.timeout.ms": timeout_ms})


def consumer(settings: Settings, client_id: str, group_id: str, overrides: Mapping[str, Any] | None = None) -> Consumer:
    """A consumer-group member (``consumer_config``: manual commits, incremental assignment) with ``overrides``.
    Under the consumer group protocol, ``overrides`` naming a property the protocol keeps on the broker
    (``BROKER_SIDE_GROUP_PROPERTIES``) lose it, and whoever subscribes calls ``set_group_timeouts`` first."""
    config = {**consumer_config(settings, group_id, client_id), **(overrides or {})}
    if settings.group_protocol == "consumer":
        for key in BROKER_SIDE_GROUP_PROPERTIES:
            config.pop(key, None)
    client: Consumer = _build("consumer", settings, config)
    return client


def reader(settings: Settings, client_id: str, group_id: str, overrides: Mapping[str, Any] | None = None) -> Consumer:
    """A consumer for ``assign()``: the common config, ``group.id`` (librdkafka wants one; it is joined only if
    the caller subscribes, but the client looks up its coordinator, so a component names it ``<p>-...``, which
    its ACLs let it describe: ``schemas.acls``) and no auto commit, with ``overrides``."""
    client: Consumer = _build("consumer", settings, {**common_config(settings, client_id), "group.id": group_id,
                                                     "enable.auto.commit": False, **READ_COMMITTED,
                                                     **(overrides or {})})
    return client



def producer_config(settings: Settings, client_id: str) -> dict[str, Any]:
    return {
        **common_config(settings, client_id),
        **DURABLE_PRODUCER,
        "linger.ms": settings.producer_linger_ms,
        "request.timeout.ms": settings.request_timeout_ms,
        "compression.type": "none",
        "message.max.bytes": MAX_RECORD_BYTES,
        # Java-compatible key hashing (as the Java client and Kafka tools use): a task's
        # messages land in the same partition whoever produces them.
        "partitioner": "murmur2_random",
    }


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


#: Delivery errors after which the record may be in the log all the same: the request reached the broker (or may
#: have) but its answer never came (a timeout, a purge of what was in flight), or the broker wrote it and could not
#: replicate it in time. Any other delivery error is an answer that refused the record.
UNKNOWN_OUTCOME_ERRORS = frozenset({
    KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError._PURGE_INFLIGHT, KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND, KafkaError._TIMED_OUT_QUEUE,
})


def outcome_unknown(err: KafkaError | BaseException | None, msg: Message | None = None) -> bool:
    """Whether a failed delivery (its ``KafkaError``, or an exception caused by one) may have been written
    anyway (``UNKNOWN_OUTCOME_ERRORS``): the sender cannot tell, and only reading the log (or repeating the
    request idempotently) can. With the delivery report's ``msg``: a record never given a partition (the client
    never learnt where the topic lives) was never sent, so it was not written."""
    partition = msg.partition() if msg is not None else 0  # confluent-kafka says None for "not assigned yet"
    if partition is None or partition < 0:
        return False
    while isinstance(err, BaseException) and not isinstance(err, KafkaException) and err.__cause__ is not None:
        err = err.__cause__
    if isinstance(err, KafkaException) and err.args and isinstance(err.args[0], KafkaError):
        err = err.args[0]
    return isinstance(err, KafkaError) and err.code() in UNKNOWN_OUTCOME_ERRORS


#: After a fatal error the client is rebuilt at the next call; a fatal error again within ``FATAL_STORM_S`` of a
#: rebuild makes the next one wait ``REBUILD_WAIT_S``, doubling up to ``MAX_REBUILD_WAIT_S`` while they keep coming,
#: so a cause that persists (an ACL that denies the producer id, a record the client cannot pass) does not spin.
REBUILD_WAIT_S = 1.0
MAX_REBUILD_WAIT_S = 30.0
#: Fatal errors closer than this to the last rebuild count as "keeping coming" (the wait doubles); later, the next
#: rebuild is immediate again.
FATAL_STORM_S = 60.0
#: A transaction call that has not returned this long after its own timeout is wedged: librdkafka 2.16's
#: ``send_offsets_to_transaction`` can wait for good on a group coordinator cached on a broker that left
#: (confluent-kafka-python's librdkafka issues #5456, #5511), seen after a rolling restart of the brokers.
WEDGED_AFTER_S = 5.0


class RecoveringProducer:
    """A confluent-kafka producer that replaces its client after a fatal error; ``produce``, ``poll`` and
    ``flush`` as confluent-kafka's.

    librdkafka's fatal errors (an idempotent producer fenced by the broker,
    a sequence gap it cannot close) leave a client that refuses every later
    record. The first one a call meets (``poll`` and ``flush`` raise it,
    ``produce`` raises ``_FATAL``) is kept in ``problem`` and logged once;
    the next call purges the old client (its delivery reports fail what it
    still held: ``_PURGE_QUEUE`` not written, ``_PURGE_INFLIGHT`` outcome
    unknown) and builds a new one with the same config, at once the first
    time and later after a wait (``REBUILD_WAIT_S``). Until then ``produce``
    raises ``BrokerUnavailable`` naming the fatal error, before anything is
    sent. A producer configured with a ``transactional.id`` is fenced again
    (``init_transactions``) by each new client: the new one owns the id (the
    processor's is: ``transactional_producer``); its transaction calls note
    a fatal error as ``produce`` does, so a fenced transactional producer is
    rebuilt by the next call. Thread-safe like confluent-kafka's producer:
    one thread may poll while others produce.
    """

    def __init__(self, settings: Settings, config: Mapping[str, Any]) -> None:
        self._settings = settings
        self._config = dict(config)
        self.client_id = str(self._config.get("client.id"))
        self._lock = threading.Lock()
        self._client: Any = None
        #: Why this producer cannot write now (a fatal error not yet mended, a rebuild that failed), or None.
        self.problem: str | None = None
        #: How many times the client was replaced.
        self.rebuilds = 0
        self._wait = 0.0
        self._due = 0.0
        self._rebuilt_at = -1e9
        self._client = self._new()

    def _new(self) -> Any:
        client = _build("producer", self._settings, self._config)
        if self._config.get("transactional.id"):
            with broker_errors(f"fencing transactional id {self._config['transactional.id']}"):
                client.init_transactions(30)
        return client

    # ------------------------------------------------------------ confluent-kafka's calls

    def produce(self, topic: str, value: bytes | str | None = None, key: bytes | str | None = None,
                **kwargs: Any) -> None:
        client = self._usable()
        try:
            client.produce(topic, value, key, **kwargs)
        except KafkaException as exc:
            self._note(client, exc)
            raise

    def poll(self, timeout: float = 0.0) -> int:
        client = self._usable(quiet=True)
        if client is None:  # waiting to rebuild: nothing to report
            time.sleep(timeout)
            return 0
        try:
            return client.poll(timeout)  # type: ignore[no-any-return]
        except KafkaException as exc:
            if not self._note(client, exc):
                raise
            return 0

    def flush(self, timeout: float = 10.0) -> int:
        """Wait up to ``timeout`` for every record's delivery report; the number still waiting. After a fatal
        error what the old client held has failed (its reports ran) and does not count."""
        deadline = time.monotonic() + timeout
        while True:
            client = self._usable(quiet=True)
            if client is None:
                return 0
            try:
                return client.flush(max(0.0, deadline - time.monotonic()))  # type: ignore[no-any-return]
            except KafkaException as exc:
                if not self._note(client, exc):
                    raise
            if time.monotonic() >= deadline:
                return 0

    # ------------------------------------------------------------ transactions (a ``transactional.id`` producer)

    def begin_transaction(self) -> None:
        """Start a transaction; ``BrokerUnavailable`` while a fatal error waits for its rebuild."""
        self._transaction_call("begin_transaction")

    def send_offsets_to_transaction(self, offsets: list[TopicPartition], group_metadata: Any,
                                    timeout: float = 30.0) -> None:
        """Add a consumer group's ``offsets`` to the transaction (committed with it; KIP-447 fencing by the
        group's generation in ``group_metadata``)."""
        self._transaction_call("send_offsets_to_transaction", offsets, group_metadata, timeout=timeout)

    def commit_transaction(self, timeout: float = 30.0, attempts: int = 3) -> None:
        """Commit the transaction (every record acknowledged, then the commit marker), called again up to
        ``attempts`` times while it fails with an error worth retrying (a timeout)."""
        for attempt in range(attempts):
            try:
                self._transaction_call("commit_transaction", timeout=timeout)
                return
            except BrokerUnavailable as exc:
                cause = exc.__cause__
                err = cause.args[0] if isinstance(cause, KafkaException) and cause.args else None
                if not isinstance(err, KafkaError) or not err.retriable() or attempt == attempts - 1:
                    raise
                log.warning("producer %s: commit of its transaction is retried: %s", self.client_id, err.str())

    def abort_transaction(self, timeout: float = 30.0) -> None:
        self._transaction_call("abort_transaction", timeout=timeout)

    def _transaction_call(self, name: str, *args: Any, timeout: float | None = None) -> None:
        """confluent-kafka's ``name`` on the current client; its error is ``BrokerUnavailable`` (the library's
        error its cause), a fatal one noted first (the next call rebuilds the client, fencing this one).

        A call given a ``timeout`` runs in a thread of its own and is given up ``WEDGED_AFTER_S`` after it: the
        client is then treated as fenced (``problem``; the next call builds a new one, whose
        ``init_transactions`` fences the wedged one and aborts its transaction) and ``BrokerUnavailable`` says
        so. The wedged thread is left to the library."""
        client = self._usable()
        what = f"{name} of {self._config.get('transactional.id')}"
        try:
            with broker_errors(what):
                try:
                    if timeout is None:
                        getattr(client, name)(*args)
                    else:
                        self._bounded(client, name, (*args, timeout), timeout + WEDGED_AFTER_S)
                except KafkaException as exc:
                    self._note(client, exc)
                    raise
        except RecordRefused as exc:  # a transaction call refuses no record: a refused one failed the transaction
            raise BrokerUnavailable(str(exc)) from exc.__cause__

    def _bounded(self, client: Any, name: str, args: tuple[Any, ...], limit: float) -> None:
        """``client.name(*args)`` in a daemon thread, waited for ``limit`` seconds; its exception re-raised. Past
        the limit the client is marked wedged and ``BrokerUnavailable`` raised."""
        outcome: list[BaseException | None] = []

        def call() -> None:
            try:
                getattr(client, name)(*args)
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 — handed to the caller's thread as it is
                outcome.append(exc)

        worker = threading.Thread(target=call, name=f"{self.client_id}-{name}", daemon=True)
        worker.start()
        worker.join(limit)
        if not outcome:
            with self._lock:
                if client is self._client and self.problem is None:
                    self.problem = f"{name} did not return within {limit:.0f}s (wedged)"
                    self._wait, self._due = 0.0, time.monotonic()
            log.error("producer %s: %s did not return within %.0fs; the client is replaced (fencing it)",
                      self.client_id, name, limit)
            raise BrokerUnavailable(f"producer {self.client_id}: {name} did not return within {limit:.0f}s")
        if outcome[0] is not None:
            raise outcome[0]

    def __len__(self) -> int:
        client = self._client
        return len(client) if client is not None else 0

    # ------------------------------------------------------------ recovery

    def _note(self, client: Any, exc: KafkaException) -> bool:
        """Whether ``exc`` (raised by ``client``) is a fatal error; the first of a client is kept and logged."""
        err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        if err is None or not (err.fatal() or err.code() == KafkaError._FATAL):
            return False
        with self._lock:
            if client is self._client and self.problem is None:
                self.problem = f"fatal error: {err.str()}"
                self._wait = (min(MAX_REBUILD_WAIT_S, max(REBUILD_WAIT_S, 2 * self._wait))
                              if time.monotonic() - self._rebuilt_at < FATAL_STORM_S else 0.0)
                self._due = time.monotonic() + self._wait
                log.error("producer %s hit a %s; it is rebuilt %s", self.client_id, self.problem,
                          f"in {self._wait:.0f}s" if self._wait else "now")
        return True

    def _usable(self, quiet: bool = False) -> Any:
        """The client to call: the current one, or a new one once the fatal error's wait is over. While there is
        none: None (``quiet``) or ``BrokerUnavailable``. A fenced client is retired at once, whatever the wait."""
        if self.problem is None:
            return self._client
        with self._lock:
            if self.problem is None:  # another thread rebuilt it meanwhile
                return self._client
            old, self._client = self._client, None
            if time.monotonic() >= self._due:
                self._build()
            client, problem = self._client, self.problem
        if old is not None:
            self._retire(old)
        if problem is None:
            return client
        if quiet:
            return None
        raise BrokerUnavailable(f"producer {self.client_id} cannot write ({problem}); nothing was sent") from None

    def _build(self) -> None:
        """A new client in place of the fenced one (under the lock); ``problem`` says why not when it fails."""
        try:
            self._client = self._new()
        except BrokerUnavailable as exc:
            cause = (self.problem or "fatal error").split("; rebuilding failed")[0]
            self.problem = f"{cause}; rebuilding failed: {exc}"
            self._wait = min(MAX_REBUILD_WAIT_S, max(REBUILD_WAIT_S, 2 * self._wait))
            self._due = time.monotonic() + self._wait
            log.warning("producer %s: rebuilding failed, again in %.0fs: %s", self.client_id, self._wait, exc)
            return
        self.rebuilds += 1
        self._rebuilt_at = time.monotonic()
        log.warning("producer %s rebuilt after a %s", self.client_id, self.problem)
        self.problem = None

    def _retire(self, old: Any) -> None:
        """Fail what a fenced client still holds: its delivery reports run here, the one of the record that met
        the fatal error among them (a sender that sends again from one reaches the new client, or is refused)."""
        try:
            old.purge(True, True, True)
            old.flush(1.0)  # nothing is left to send: this only serves the purged records' reports
        except Exception as exc:  # noqa: BLE001 — a fenced client's flush may fail in any way; it is dropped anyway
            log.debug("producer %s: purging the fenced client: %s", self.client_id, exc)

    def __getattr__(self, name: str) -> Any:
        """confluent-kafka's other calls (``list_topics``, the transaction calls), on the current client."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.__dict__.get("_client"), name)


class broker_errors:
    """``with broker_errors(what):`` library errors raised in the block leave it as ``BrokerUnavailable``
    (``RecordRefused`` for a record the broker refuses for good, ``is_permanent``), saying ``what`` was being
    done and the library's error (which is its ``__cause__``: ``timed_out`` reads it). Other errors pass."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, KafkaException):
            raise (RecordRefused if is_permanent(exc) else BrokerUnavailable)(f"{self.what}: {exc}") from exc


#: Consumer properties the consumer group protocol (KIP-848) keeps on the broker: librdkafka refuses a consumer
#: that sets them with ``group.protocol=consumer``. The session timeout and heartbeat interval become the group's
#: configs (``set_group_timeouts``); the broker's assignor takes the place of the client's strategy.
BROKER_SIDE_GROUP_PROPERTIES = ("session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy",
                                "group.protocol.type")


def consumer_config(settings: Settings, group_id: str, client_id: str) -> dict[str, Any]:
    """A group member's properties: manual commits, from the earliest offset, and the group protocol of
    ``settings.group_protocol``: ``consumer`` (KIP-848; timeouts on the group, ``group_timeouts``) or ``classic``
    (the session timeout and a heartbeat a third of it, cooperative-sticky)."""
    config = {
        **common_config(settings, client_id),
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        **READ_COMMITTED,
    }
    if settings.group_protocol == "consumer":
        return {**config, "group.protocol": "consumer"}
    return {
        **config,
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": max(500, settings.session_timeout_ms // 3),
        "partition.assignment.strategy": "cooperative-sticky",
    }


def group_timeouts(settings: Settings) -> dict[str, str]:
    """The group configs (KIP-848) that carry ``settings.session_timeout_ms`` and a heartbeat interval of a
    quarter of it (at least 250 ms): a member's heartbeat also brings it a new assignment, so the interval bounds
    how soon a survivor takes a dead member's partitions once the session ended."""
    return {"consumer.session.timeout.ms": str(settings.session_timeout_ms),
            "consumer.heartbeat.interval.ms": str(max(250, settings.session_timeout_ms // 4))}


#: Groups whose timeouts this process has set: (bootstrap servers, group) -> the configs set.
_GROUP_TIMEOUTS_SET: dict[tuple[str, str], dict[str, str]] = {}
_GROUP_TIMEOUTS_LOCK = threading.Lock()


def set_group_timeouts(settings: Settings, group_id: str, timeout: float = 5.0) -> bool:
    """Under the consumer group protocol, set ``group_timeouts(settings)`` as configs of ``group_id``
    (IncrementalAlterConfigs on the group), once per process and group; whether they are set (True under the
    classic protocol, whose consumers carry them). The coordinator reads them at every heartbeat, so setting them
    just before subscribing is enough. The broker keeps them within its
    ``group.consumer.min/max.session.timeout.ms`` and ``...heartbeat.interval.ms`` bounds and refuses others; a
    refusal (bounds, an ACL without ALTER_CONFIGS on the group, a broker without group configs) is logged and the
    group runs on the broker's defaults (``group.consumer.session.timeout.ms``, 45 s in Kafka 4.x)."""
    if settings.group_protocol != "consumer":
        return True
    wanted = group_timeouts(settings)
    key = (settings.bootstrap_servers, group_id)
    with _GROUP_TIMEOUTS_LOCK:
        if _GROUP_TIMEOUTS_SET.get(key) == wanted:
            return True
        resource = ConfigResource(ResourceType.GROUP, group_id, incremental_configs=[
            ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET) for name, value in wanted.items()])
        try:
            client = admin(settings, "taskstream-group-config")
            for fut in client.incremental_alter_configs([resource], request_timeout=timeout).values():
                fut.result(timeout)
        except (KafkaException, TimeoutError, BrokerUnavailable) as exc:
            log.warning("group %s: could not set %s, so the broker's defaults apply (docs/operations.md, "
                        "\"Consumer group protocol\"): %s", group_id, wanted, exc)
            return False
        _GROUP_TIMEOUTS_SET[key] = wanted
        return True


def admin(settings: Settings, client_id: str = "taskstream-admin") -> AdminClient:
    client: AdminClient = _build("admin", settings, common_config(settings, client_id))
    return client


#: Client errors that say the connection itself failed: nothing listens, TLS or SASL refused us.
CONNECTION_ERRORS = frozenset({
    KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._AUTHENTICATION, KafkaError._SSL,
    KafkaError._RESOLVE, KafkaError.SASL_AUTHENTICATION_FAILED,
})


def security_problem(settings: Settings, err: KafkaError) -> str | None:
    """What a connection error says about this process's TLS or SASL settings when retrying with them cannot
    help (the SASL credentials were refused, the broker's certificate could not be verified): one line naming the
    cause and the settings to look at, then the client's own words. None for any other error."""
    text = err.str()
    where = settings.bootstrap_servers
    if err.code() in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):
        who = f"user {settings.kafka_sasl_username!r} ({settings.kafka_sasl_mechanism or 'GSSAPI'})"
        if "invalid credentials" in text:
            return (f"Kafka at {where} refused the SASL credentials of {who}: wrong password or unknown user "
                    f"(TASKSTREAM_KAFKA_SASL_USERNAME, TASKSTREAM_KAFKA_SASL_PASSWORD or _PASSWORD_FILE); "
                    f"the client said: {text}")
        return f"Kafka at {where} refused SASL authentication as {who}: {text}"
    if err.code() == KafkaError._SSL and "certificate verify failed" in text:
        trusted = (f"TASKSTREAM_KAFKA_SSL_CA_LOCATION={settings.kafka_ssl_ca_location}"
                   if settings.kafka_ssl_ca_location else "the system's CAs (TASKSTREAM_KAFKA_SSL_CA_LOCATION unset)")
        return (f"TLS with Kafka at {where} failed: the broker's certificate is not trusted (not signed by a CA "
                f"of {trusted}, or it does not name the host); the client said: {text}")
    return None


def wait_for_broker(settings: Settings, timeout: float = 30.0, *, refused_s: float | None = None) -> None:
    """Block until the cluster answers a metadata request, or raise ``BrokerUnavailable``: after ``timeout``
    seconds, or, with ``refused_s``, as soon as connections to the bootstrap servers have failed for that long
    (``CONNECTION_ERRORS``: refused, TLS or SASL failed), with the client's reason. Command-line tools pass
    ``refused_s``; what starts beside its broker (``taskstream dev``) waits the whole ``timeout``. Refused
    credentials or an untrusted broker certificate raise ``SecurityRefused`` at once (``security_problem``)."""
    unanswered = _await_answer(settings, timeout, refused_s)
    if unanswered is not None:
        raise BrokerUnavailable(unanswered)


def check_security(settings: Settings, timeout: float = 15.0) -> None:
    """What a component does first when it talks TLS or SASL to Kafka: raise ``SecurityRefused`` naming the
    cause when the cluster refuses its credentials or it does not trust the broker's certificate, so a
    misconfigured process stops at start with one line instead of retrying for ever. Returns once the cluster
    answers, or, if nothing answers within ``timeout``, with a warning (an absent broker is the component's to
    wait for, as it is without security). Nothing to check with PLAINTEXT (no wait either)."""
    if settings.kafka_security_protocol in (None, "PLAINTEXT"):
        return
    unanswered = _await_answer(settings, timeout, None)
    if unanswered is not None:
        log.warning("Kafka's TLS and SASL not checked at start: %s", unanswered)


def _await_answer(settings: Settings, timeout: float, refused_s: float | None) -> str | None:
    """``wait_for_broker``'s loop: None once the cluster answered, or why it did not within ``timeout``."""
    failed: list[KafkaError] = []
    client: AdminClient = _build("admin", settings, {**common_config(settings, "taskstream-probe"),
                                                     "error_cb": failed.append})
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    first_failed: float | None = None
    while time.monotonic() < deadline:
        try:
            client.list_topics(timeout=min(0.25 if refused_s is not None else 2.0,
                                           max(0.1, deadline - time.monotonic())))
            return None
        except KafkaException as exc:
            last = exc
        client.poll(0)  # serves error_cb
        problem = next((p for p in map(lambda e: security_problem(settings, e), failed) if p), None)
        if problem is not None:
            raise SecurityRefused(problem)
        reasons = [e for e in failed if e.code() in CONNECTION_ERRORS]
        if refused_s is not None and reasons:
            first_failed = first_failed or time.monotonic()
            if time.monotonic() - first_failed >= refused_s:
                why = next((e for e in reversed(reasons) if e.code() != KafkaError._ALL_BROKERS_DOWN), reasons[-1])
                raise BrokerUnavailable(f"no Kafka broker answered at {settings.bootstrap_servers}: {why.str()}")
        time.sleep(0.1)
    return f"no Kafka broker answered at {settings.bootstrap_servers} within {timeout:.0f}s: {last}"


_ACL_KINDS: dict[ResourceKind, ResourceType] = {
    "topic": ResourceType.TOPIC, "group": ResourceType.GROUP, "transactional_id": ResourceType.TRANSACTIONAL_ID,
    "cluster": ResourceType.BROKER}  # confluent-kafka's BROKER is Kafka's CLUSTER resource
_ACL_PATTERNS: dict[Pattern, ResourcePatternType] = {
    "literal": ResourcePatternType.LITERAL, "prefixed": ResourcePatternType.PREFIXED}


def _binding(acl: Acl) -> AclBinding:
    return AclBinding(_ACL_KINDS[acl.kind], acl.name, _ACL_PATTERNS[acl.pattern], acl.principal, "*",
                      getattr(AclOperation, acl.operation.upper()), AclPermissionType.ALLOW)


def apply_acls(settings: Settings, wanted: Iterable[Acl], timeout: float = 30.0) -> list[Acl]:
    """Create the ACLs of ``wanted`` that the cluster does not have yet (``schemas.acls``); return those it
    created. Idempotent; ACLs the cluster has beyond ``wanted`` are left alone (``cluster_acls`` lists them).
    ``BrokerUnavailable`` names what failed (no authorizer, not allowed to alter ACLs, the broker away)."""
    have = set(cluster_acls(settings, timeout))
    missing = [a for a in dict.fromkeys(wanted) if a not in have]
    if not missing:
        return []
    client = admin(settings, "taskstream-acls")
    try:
        futures = client.create_acls([_binding(a) for a in missing], request_timeout=timeout)
        for fut in futures.values():
            fut.result(timeout)
    except (KafkaException, TimeoutError) as exc:
        raise BrokerUnavailable(f"creating ACLs: {exc}") from None
    return missing


def cluster_acls(settings: Settings, timeout: float = 30.0) -> list[Acl]:
    """Every ALLOW ACL of the cluster for any host that ``Acl`` can express (on a topic, group, transactional id
    or the cluster), sorted; ``BrokerUnavailable`` when the cluster cannot say (no authorizer, not allowed)."""
    client = admin(settings, "taskstream-acls")
    query = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,  # type: ignore[arg-type]
                             AclOperation.ANY, AclPermissionType.ALLOW)  # None: any name, principal, host
    try:
        bindings = client.describe_acls(query, request_timeout=timeout).result(timeout)
    except (KafkaException, TimeoutError) as exc:
        raise BrokerUnavailable(f"listing ACLs: {exc}") from None
    kinds = {v: k for k, v in _ACL_KINDS.items()}
    patterns = {v: k for k, v in _ACL_PATTERNS.items()}
    operations: dict[str, Operation] = {"READ": "read", "WRITE": "write", "DESCRIBE": "describe",
                                        "DESCRIBE_CONFIGS": "describe_configs", "ALTER_CONFIGS": "alter_configs",
                                        "IDEMPOTENT_WRITE": "idempotent_write"}
    return sorted(Acl(b.principal, kinds[b.restype], b.name, patterns[b.resource_pattern_type],
                      operations[b.operation.name])
                  for b in bindings if b.restype in kinds and b.resource_pattern_type in patterns
                  and b.operation.name in operations and b.host == "*")


def topic_partitions(client: AdminClient | Consumer, timeout: float = 10.0) -> dict[str, int]:
    """Partition count of every topic the cluster has (without an error); ``BrokerUnavailable`` if it does not
    answer (``timed_out`` tells a timeout)."""
    try:
        topics = client.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise BrokerUnavailable(f"listing topics: {exc}") from exc
    return {name: len(meta.partitions) for name, meta in topics.items() if meta.error is None and meta.partitions}


def ensure_topics(settings: Settings, specs: Iterable[TopicSpec], timeout: float = 30.0) -> list[str]:
    """Create missing topics; return the problems of existing ones (``topic_problems``): an empty list when
    every topic is as ``specs`` say.

    Idempotent: existing topics are left alone and reported if they differ. Created topics are usable
    (every partition has a leader that answers) when this returns.
    """
    client = admin(settings)
    specs = list(specs)
    try:
        existing = client.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise BrokerUnavailable(str(exc)) from exc
    isr = {} if settings.min_insync_replicas is None else {"min.insync.replicas": str(settings.min_insync_replicas)}
    missing = [NewTopic(s.name, s.partitions, settings.replication_factor, config={**isr, **s.config})
               for s in specs if s.name not in existing]
    problems = topic_problems(client, [s for s in specs if s.name in existing], existing, timeout)
    if missing:
        for name, fut in client.create_topics(missing, operation_timeout=timeout).items():
            try:
                fut.result(timeout)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise BrokerUnavailable(f"could not create topic {name}: {exc}") from exc
        _await_leaders(client, {t.topic: t.num_partitions for t in missing}, timeout)
    return problems


def require_topics(settings: Settings, specs: Iterable[TopicSpec], timeout: float = 30.0) -> None:
    """Raise ``TopicMismatch`` when a config of an existing topic of ``specs`` has another value than the spec
    (``config_problems``): what a component checks at start-up before it runs on the topics. Missing topics
    are the caller's to check; partition counts too (components use the counts the topics have, and
    ``ensure_topics`` reports a count other than the settings')."""
    client = admin(settings)
    try:
        existing = client.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise BrokerUnavailable(str(exc)) from exc
    specs = [s for s in specs if s.name in existing and s.config]
    configs = topic_configs(client, [s.name for s in specs], timeout)
    problems = [p for s in specs for p in config_problems(s, configs.get(s.name, {}))]
    if problems:
        raise TopicMismatch(problems)


def topic_problems(client: AdminClient, specs: Iterable[TopicSpec], existing: Mapping[str, Any],
                   timeout: float) -> list[str]:
    """How the topics of ``specs`` that exist (``existing``: ``list_topics().topics``) differ from them: one
    line per wrong partition count and per config of ``TopicSpec.config`` with another value, naming the topic,
    the setting, its value and the one expected. Missing topics are not reported here."""
    specs = [s for s in specs if s.name in existing]
    problems = []
    for spec in specs:
        count = len(existing[spec.name].partitions)
        if count != spec.partitions:
            problems.append(f"topic {spec.name} has {count} partitions, expected {spec.partitions}")
    configs = topic_configs(client, [s.name for s in specs if s.config], timeout)
    for spec in specs:
        problems += config_problems(spec, configs.get(spec.name, {}))
    return problems


def config_problems(spec: TopicSpec, config: Mapping[str, str | None]) -> list[str]:
    """The configs of ``spec`` whose value in ``config`` (as the broker describes the topic) is another one; a
    config the broker does not report is not judged."""
    return [f"topic {spec.name} has {key}={config[key]}, expected {want}"
            for key, want in spec.config.items() if config.get(key) is not None and config[key] != want]


def topic_configs(client: AdminClient, names: list[str], timeout: float) -> dict[str, dict[str, str | None]]:
    """Every config of each topic as DescribeConfigs reports it (its value, None when it has none)."""
    if not names:
        return {}
    out = {}
    try:
        futures = client.describe_configs([ConfigResource(ResourceType.TOPIC, n) for n in names],
                                          request_timeout=timeout)
        for resource, fut in futures.items():
            out[resource.name] = {k: entry.value for k, entry in fut.result(timeout).items()}
    except (KafkaException, TimeoutError) as exc:
        raise BrokerUnavailable(f"configs of topics {', '.join(names)}: {exc}") from None
    return out


def _await_leaders(client: AdminClient, partitions: Mapping[str, int], timeout: float) -> None:
    """Until every partition of new topics answers a ListOffsets: a topic in the metadata may not have its
    leader ready yet (NOT_LEADER_OR_FOLLOWER for a moment after creation)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            topics = client.list_topics(timeout=timeout).topics
            if all(n in topics and len(topics[n].partitions) == count for n, count in partitions.items()):
                # OffsetSpec.latest is not annotated in confluent-kafka's pure-Python admin module
                request = {TopicPartition(n, p): OffsetSpec.latest()  # type: ignore[no-untyped-call]
                           for n, count in partitions.items()
                           for p in range(count)}
                for fut in client.list_offsets(request, request_timeout=max(0.5, deadline - time.monotonic())).values():
                    fut.result()
                return
        except KafkaException as exc:
            last = exc
        time.sleep(0.05)
    raise BrokerUnavailable(f"topics {sorted(partitions)} not usable {timeout:.0f}s after creation: {last}")


class AsyncProducer:
    """A ``RecoveringProducer`` whose ``send`` is awaitable (acked by the broker)."""

    def __init__(self, settings: Settings, client_id: str, **overrides: Any) -> None:
        self._producer = producer(settings, client_id, overrides)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._poll_loop, name=f"{client_id}-producer-poll", daemon=True)
        self._thread.start()

    def _poll_loop(self) -> None:
        while not self._closed.is_set():
            try:
                self._producer.poll(0.05)
            except Exception:  # a delivery callback that raised must not end every later delivery report
                log.exception("producer poll: a delivery callback failed")

    def produce(self, topic: str, key: str | bytes, value: bytes | None, headers: Headers | None = None,
                on_delivery: DeliveryCallback | None = None, partition: int | None = None) -> None:
        """Fire and forget (with an optional delivery callback run on the poll thread); a None ``value`` is a
        tombstone of ``key``; ``partition``: that partition, not the key's."""
        deadline = time.monotonic() + 10.0
        extra = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery, **extra)
                return
            except BufferError as exc:  # the local queue is full: wait for deliveries to make room
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(f"producer queue full for 10 s: {exc}") from exc
                time.sleep(0.01)
            except KafkaException as exc:
                raise (RecordRefused if is_permanent(exc) else BrokerUnavailable)(str(exc)) from exc

    def send(self, topic: str, key: str | bytes, value: bytes | None,
             headers: Headers | None = None, partition: int | None = None) -> asyncio.Future[Message]:
        """Produce and return a future that resolves when the broker acknowledged the record. It fails with
        ``RecordRefused`` (refused for good), ``WriteOutcomeUnknown`` (no answer in time: perhaps written) or
        ``BrokerUnavailable`` (not written); ``BrokerUnavailable`` raised here means nothing was sent."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Message] = loop.create_future()

        def done(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                error = (RecordRefused if is_permanent(err) else WriteOutcomeUnknown if outcome_unknown(err, msg)
                         else BrokerUnavailable)
                loop.call_soon_threadsafe(_set_exception, fut, error(f"produce to {topic} failed: {err.str()}"))
            else:
                loop.call_soon_threadsafe(_set_result, fut, msg)

        self.produce(topic, key, value, headers, done, partition)
        return fut

    def flush(self, timeout: float = 10.0) -> int:
        return self._producer.flush(timeout)

    @property
    def problem(self) -> str | None:
        """Why this producer cannot write now (``RecoveringProducer.problem``), or None."""
        return self._producer.problem

    @property
    def rebuilds(self) -> int:
        return self._producer.rebuilds

    def close(self, timeout: float = 10.0) -> int:
        remaining = self._producer.flush(timeout)
        self._closed.set()
        self._thread.join(timeout=2)
        return remaining


def async_producer(settings: Settings, client_id: str, overrides: Mapping[str, Any] | None = None) -> AsyncProducer:
    """An ``AsyncProducer`` (awaitable sends) over ``producer(settings, client_id, overrides)``."""
    return AsyncProducer(settings, client_id, **(overrides or {}))


def _set_result(fut: asyncio.Future[Message], value: Message) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Message], exc: Exception) -> None:
    if not fut.done():
        fut.set_exception(exc)


def consume_available(consumer: Consumer, max_messages: int, timeout: float) -> list[Message]:
    """Wait up to ``timeout`` for one message, then take whatever else is already here.

    ``Consumer.consume(n, timeout)`` waits until it has ``n`` messages or the
    timeout passed, which puts the whole timeout on the latency of a lone
    message; this returns as soon as there is something to do.
    """
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(max_messages - 1, 0)] if max_messages > 1 else [first]


def watermarks(consumer: Consumer, topic: str, partitions: Iterable[int], timeout: float) -> dict[int, tuple[int, int]]:
    """(low, high) offsets of each partition of ``topic``, asked of the broker now, not librdkafka's cached ones.

    ``consumer`` is any consumer of ours (a ``reader`` will do). ``BrokerUnavailable`` when the broker does not
    answer within ``timeout`` seconds."""
    with broker_errors(f"end offsets of {topic}"):
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout, cached=False)
                for p in partitions}


def end_offsets(consumer: Consumer, topic: str, partitions: Iterable[int], timeout: float) -> dict[int, int]:
    """Each partition's end offset (high watermark) now (``watermarks``); ``BrokerUnavailable`` as there."""
    return {p: high for p, (_, high) in watermarks(consumer, topic, partitions, timeout).items()}


def read_to_ends(consumer: Consumer, topic: str, ends: Mapping[int, int], *, timeout: float = 600.0,
                 batch: int = 10_000) -> Iterator[list[Message]]:
    """Batches of the records of ``topic``'s partitions, from their beginning up to (excluding) ``ends[p]``.

    A reader that must see "everything so far" takes the end offsets first
    (``end_offsets``) and reads up to them; records appended meanwhile are
    not waited for. ``consumer`` is a ``reader`` (assigned here, never
    joined) with ``enable.partition.eof``: a partition is done when a
    record at its end was read, its position reached the end, or it reports
    end of partition there (offsets a compaction left out cannot hold the read
    up). ``BrokerUnavailable`` when the read has not finished after
    ``timeout`` seconds, the consumer hits a fatal error or the broker fails a request.
    """
    with broker_errors(f"reading {topic}"):
        yield from _read_to_ends(consumer, topic, ends, timeout, batch)


def _read_to_ends(consumer: Consumer, topic: str, ends: Mapping[int, int], timeout: float,
                  batch: int) -> Iterator[list[Message]]:
    pending = {p for p, end in ends.items() if end > 0}
    if not pending:
        return
    # Leaders known before assign() (all topics: naming one may auto-create it on some brokers): otherwise
    # librdkafka looks the start offsets up only half a second later.
    consumer.list_topics(timeout=min(timeout, 30.0))
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(pending)])
    deadline = time.monotonic() + timeout
    while pending:
        if time.monotonic() > deadline:
            raise BrokerUnavailable(f"reading {topic} partitions {sorted(pending)} up to offsets "
                                    f"{[ends[p] for p in sorted(pending)]} timed out after {timeout:.0f}s")
        keep = []
        for m in consume_available(consumer, batch, 0.2):
            # A record, and an end-of-partition report, always has its partition and offset (typed Optional).
            p, offset, err = m.partition(), m.offset(), m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if p is not None and offset is not None and offset >= ends.get(p, 0):
                        pending.discard(p)
                elif err.fatal():
                    raise BrokerUnavailable(f"reading {topic}: {err}")
                else:
                    log.debug("reading %s: %s", topic, err)
                continue
            if p is None or offset is None or p not in pending or offset >= ends[p]:
                continue
            keep.append(m)
            if offset >= ends[p] - 1:
                pending.discard(p)
        if keep:
            yield keep
        if pending:
            positions = consumer.position([TopicPartition(topic, p) for p in pending])
            pending -= {tp.partition for tp in positions if tp.offset >= ends[tp.partition]}


def committed_offsets(client: AdminClient, group: str, tps: list[TopicPartition],
                      timeout: float) -> dict[tuple[str, int], int]:
    """The offsets ``group`` committed for ``tps``, keyed (topic, partition); partitions never committed are left
    out. Raises ``KafkaException`` or ``TimeoutError`` (callers turn them into their own errors)."""
    if not tps:  # nothing to ask (the topics do not exist): the admin client would refuse an empty request
        return {}
    request = ConsumerGroupTopicPartitions(group, tps)
    result = client.list_consumer_group_offsets([request], request_timeout=timeout)[group].result(timeout)
    return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions
            if tp.error is None and tp.offset >= 0}


def group_offsets(client: AdminClient, group: str, partitions: Iterable[tuple[str, int]],
                  timeout: float) -> dict[tuple[str, int], int]:
    """``committed_offsets`` of (topic, partition) pairs; ``BrokerUnavailable`` (``timed_out`` tells a timeout)."""
    try:
        return committed_offsets(client, group, [TopicPartition(t, p) for t, p in partitions], timeout)
    except (KafkaException, TimeoutError) as exc:
        raise BrokerUnavailable(f"offsets of group {group}: {exc or 'timed out'}") from exc


def describe_cluster(client: AdminClient, timeout: float) -> dict[str, Any]:
    """Cluster id, controller id and brokers (id, host, port) as DescribeCluster reports them;
    ``BrokerUnavailable`` (``timed_out`` tells a timeout)."""
    try:
        d = client.describe_cluster(request_timeout=timeout).result(timeout)
    except (KafkaException, TimeoutError) as exc:
        raise BrokerUnavailable(f"describing the cluster: {exc or 'timed out'}") from exc
    return {"cluster_id": d.cluster_id, "controller": d.controller.id if d.controller is not None else None,
            "brokers": sorted(({"id": n.id, "host": n.host, "port": n.port} for n in d.nodes), key=lambda b: b["id"])}


def describe_groups(client: AdminClient, groups: list[str],
                    timeout: float) -> dict[str, dict[str, Any] | BrokerUnavailable]:
    """Each group as DescribeConsumerGroups reports it (state in lower case; members with member_id, client_id,
    host, instance_id and their assignment of (topic, partition) pairs), or the ``BrokerUnavailable`` that
    answered for it (``timed_out`` tells a timeout)."""
    out: dict[str, dict[str, Any] | BrokerUnavailable] = {}
    try:
        futures = client.describe_consumer_groups(groups, request_timeout=timeout)
    except KafkaException as exc:
        return {g: BrokerUnavailable(str(exc)) for g in groups}
    for group, fut in futures.items():
        try:
            d = fut.result(timeout)
        except (KafkaException, TimeoutError) as exc:
            error = BrokerUnavailable(str(exc) or "timed out")
            error.__cause__ = exc
            out[group] = error
            continue
        out[group] = {"state": d.state.name.lower(), "members": [{
            "member_id": m.member_id, "client_id": m.client_id, "host": m.host, "instance_id": m.group_instance_id,
            "assignment": [(tp.topic, tp.partition) for tp in (m.assignment.topic_partitions if m.assignment else [])],
        } for m in d.members]}
    return out


def timed_out(exc: BaseException) -> bool:
    """Whether ``exc`` (a ``BrokerUnavailable`` of this module, or its cause) is a request that timed out."""
    exc = exc.__cause__ if isinstance(exc, BrokerUnavailable) and exc.__cause__ is not None else exc
    if isinstance(exc, TimeoutError):
        return True
    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return isinstance(err, KafkaError) and err.code() == KafkaError._TIMED_OUT


def partition_lag(committed: int | None, low: int, high: int) -> int:
    """Records of a partition a group has still to read: its end minus its committed offset. A partition it never
    committed is read from the beginning (``auto.offset.reset=earliest``), so every record still held counts."""
    return max(0, high - (committed if committed is not None else low))


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
