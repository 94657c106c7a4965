"""The intake's Kafka part: one consumer-group member over the ready topics, on its own thread.

A thin, replaceable driver of the ``Intake``'s hooks: it subscribes
(cooperative-sticky), reports assignment, revocation and loss, polls batches
into ``Intake.on_batch``, dead-letters what that calls poison to ``<p>.dlq``
(``DeadLetter``), pauses and resumes partitions as ``Intake.paused_wanted``
says, and commits ``Intake.positions``. Every call on the confluent-kafka
consumer happens on this one thread, so group membership never depends on
how long a handler runs. A partition just assigned is explicitly paused
or resumed: librdkafka keeps a pause across a revocation or loss and the
reassignment that follows, and a partition left paused that way would
strand its tasks (docs/decisions/0008-composed-executor.md).
"""


from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from taskstream.schemas import BrokerUnavailable, Settings
from taskstream.schemas.kafka import AsyncProducer, consume_available
from taskstream.schemas.kafka import consumer as kafka_consumer
from taskstream.schemas.offsets import DeadLetter

from ._intake import Intake, Partition

log = logging.getLogger("taskstream.executors.runtime")

#: How often the poll thread commits finished offsets.
COMMIT_INTERVAL_S = 0.2
#: A dead letter the broker did not take (it is away) is sent again this much later.
DLQ_RETRY_S = 1.0
#: Longest single poll; bounds how fast the poll thread reacts to pause/resume/stop.
POLL_TIMEOUT_S = 0.05
#: Messages taken per poll call.
POLL_BATCH = 500


class ReadyConsumer:
    """Feeds ``intake`` from the ``<p>-executors`` group; ``start()`` it, ``close()`` it (blocking) to leave.

    ``dead_letters`` produces to ``<p>.dlq``. If the thread fails (the consumer
    cannot be created, or something unexpected), ``failure`` holds why and
    ``on_failure(exc)`` is called from the thread; the owner should stop.
    ``overrides`` are merged into the librdkafka configuration.
    """

    def __init__(
        self,
        settings: Settings,
        client_id: str,
        group: str,
        topics: list[str],
        intake: Intake,
        dead_letters: AsyncProducer,
        dlq_topic: str,
        on_failure: Callable[[BaseException], None],
        overrides: dict[str, Any] | None = None,
    ) -> None:
        self._settings = settings
        self._client_id = client_id
        self._group = group
        self._topics = topics
        self._intake = intake
        self._dead_letters = dead_letters
        self._dlq_topic = dlq_topic
        self._on_failure = on_failure
        self._overrides = dict(overrides or {})
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{client_id}-poll", daemon=True)
        # Rebound (never mutated) on the poll thread only, so assigned() and paused() can read them from anywhere.
        self._assigned: frozenset[Partition] = frozenset()
        self._paused: frozenset[Partition] = frozenset()  # what this consumer asked librdkafka to pause
        self._fresh: frozenset[Partition] = frozenset()  # assigned since the last _apply_pauses: paused or not
        self.failure: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Commit what is settled, leave the group and close the consumer; returns when the thread has ended."""
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join()

    def assigned(self) -> set[Partition]:
        """The ready partitions this member holds now."""
        return set(self._assigned)

    def paused(self) -> set[Partition]:
        """The partitions it holds paused now."""
        return set(self._paused)

    # ------------------------------------------------------------ the thread

    def _run(self) -> None:
        try:
            consumer = kafka_consumer(self._settings, self._client_id, self._group,
                                      {"on_commit": self._on_commit, **self._overrides})
        except BrokerUnavailable as exc:
            log.error("executor %s could not create its consumer: %s", self._client_id, exc)
            self._fail(exc)
            return
        try:
            consumer.subscribe(self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                               on_lost=self._on_lost)
            last_commit = time.monotonic()
            while not self._closing.is_set():
                try:
                    messages = consume_available(consumer, POLL_BATCH, POLL_TIMEOUT_S)
                except KafkaException as exc:
                    log.warning("executor %s poll failed: %s", self._client_id, exc)
                    messages = []
                if messages:
                    for msg, reason, done in self._intake.on_batch(self._without_errors(messages)):
                        self._dead_letter(msg, reason, done)
                self._apply_pauses(consumer)
                if time.monotonic() - last_commit >= COMMIT_INTERVAL_S:
                    self._commit(consumer, asynchronous=True)
                    last_commit = time.monotonic()
            self._commit(consumer, asynchronous=False)
        except BaseException as exc:  # keep the reason; the owner logs and stops
            log.exception("executor %s poll thread failed", self._client_id)
            self._fail(exc)
        finally:
            try:
                consumer.close()
            except KafkaException as exc:
                log.warning("executor %s consumer close: %s", self._client_id, exc)
            log.info("executor %s left the group", self._client_id)

    def _fail(self, exc: BaseException) -> None:
        self.failure = exc
        self._on_failure(exc)

    def _without_errors(self, messages: list) -> list:
        out = []
        for msg in messages:
            err = msg.error()
            if err is None:
                out.append(msg)
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("executor %s consumer error: %s", self._client_id, err)
        return out

    def _dead_letter(self, msg, reason: str, done: Callable[[], None]) -> None:
        letter = DeadLetter(msg, reason)
        log.warning("poison message %s goes to the dlq: %s", letter, reason)

        def delivered(err, _msg=None) -> None:
            outcome = letter.settle(err)
            if outcome == DeadLetter.RESEND:
                log.error("dlq produce of %s refused, sent again without its value: %s", letter, err)
                send()
            elif outcome == DeadLetter.LATER:
                # The broker is away: the offset stays pending (uncommitted) and the dead letter is tried again.
                log.warning("dlq produce of %s failed, again in %ss: %s", letter, DLQ_RETRY_S, err)
                again = threading.Timer(DLQ_RETRY_S, send)
                again.daemon = True
                again.start()
            else:
                if outcome == DeadLetter.GIVEN_UP:
                    log.error("dlq produce of %s refused even without its value; left in its topic: %s", letter, err)
                done()

        def send() -> None:
            key, value, headers = letter.record()
            try:
                self._dead_letters.produce(self._dlq_topic, key, value, headers=headers, on_delivery=delivered)
            except BrokerUnavailable as exc:
                cause = exc.__cause__
                delivered(cause.args[0] if isinstance(cause, KafkaException) else KafkaError(KafkaError._TRANSPORT))

        send()

    def _apply_pauses(self, consumer: Consumer) -> None:
        want = self._intake.paused_wanted(self._assigned)
        to_pause = want - self._paused
        # A fresh partition may still carry a pause from before it was revoked or lost: resumed unless wanted.
        to_resume = (self._paused | self._fresh) - want
        try:
            if to_pause:
                consumer.pause([TopicPartition(t, p) for t, p in to_pause])
                self._paused = self._paused | to_pause
                log.debug("executor %s paused %s", self._client_id, sorted(to_pause))
            if to_resume:
                consumer.resume([TopicPartition(t, p) for t, p in to_resume])
                self._paused = self._paused - to_resume
                log.debug("executor %s resumed %s", self._client_id, sorted(to_resume))
            self._fresh = frozenset()
        except KafkaException as exc:
            log.warning("executor %s pause/resume failed: %s", self._client_id, exc)

    def _commit(self, consumer: Consumer, asynchronous: bool, only: Iterable[Partition] | None = None) -> None:
        todo = self._intake.positions(only)
        if not todo:
            return
        offsets = [TopicPartition(t, p, pos) for (t, p), pos in todo]
        try:
            if asynchronous:  # two calls: the client's stubs type `asynchronous` by its literal value
                consumer.commit(offsets=offsets, asynchronous=True)
            else:
                consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("executor %s commit failed: %s", self._client_id, exc)
            return
        self._intake.on_committed(todo)
        log.debug("executor %s committed %s", self._client_id, todo)

    def _on_commit(self, err, partitions: list[TopicPartition]) -> None:
        """A commit the broker refused (a rebalance under way) is sent again by the next ``_commit``."""
        failed = self._intake.on_commit_refused(err, partitions)
        if failed:
            log.info("executor %s commit of %s refused, sent again: %s", self._client_id,
                     [f"{t}[{p}]" for t, p in failed], err or [tp.error for tp in partitions if tp.error][0])

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = frozenset((tp.topic, tp.partition) for tp in partitions)
        self._assigned = self._assigned | keys
        self._paused = self._paused - keys
        self._fresh = self._fresh | keys  # _apply_pauses, next, pauses or resumes each of them explicitly
        self._intake.on_assigned(keys)
        log.info("executor %s assigned %s", self._client_id, [f"{t}[{p}]" for t, p in sorted(keys)])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        self._commit(consumer, asynchronous=False, only=keys)
        self._forget(keys)
        self._intake.on_revoked(keys)
        log.info("executor %s revoked %s", self._client_id, [f"{t}[{p}]" for t, p in sorted(keys)])

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        self._forget(keys)
        self._intake.on_lost(keys)
        log.warning("executor %s lost %s", self._client_id, [f"{t}[{p}]" for t, p in sorted(keys)])

    def _forget(self, keys: set[Partition]) -> None:
        self._assigned = self._assigned - keys
        self._paused = self._paused - keys
        self._fresh = self._fresh - keys
