"""Topics of the user's, read by the trigger runner (``streams.triggers``): their cluster and where a group starts.

A topic trigger reads a topic taskstream does not own, on the cluster of
``<p>.events`` or on another one named by the trigger (bootstrap servers
and security settings of its own). ``source_settings`` is the ``Settings``
every client of that cluster is made from (the factory in ``schemas.kafka``
stays the one place clients are made); ``seed_group`` commits, for the
partitions a trigger's consumer group has never committed, the offset its
``start`` names, so a runner that joins later (or crashes before its first
commit) still begins where the trigger said, not where it happened to join.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_END, KafkaException, TopicPartition
from pydantic import SecretStr

from . import kafka
from .errors import BrokerUnavailable
from .settings import Settings

log = logging.getLogger(__name__)


def source_settings(settings: Settings, *, bootstrap_servers: str | None, security_protocol: str | None = None,
                    sasl_mechanism: str | None = None, sasl_username: str | None = None,
                    sasl_password: str | None = None, ssl_ca_location: str | None = None) -> Settings:
    """The settings of the cluster a trigger reads: ``settings`` itself when it names none, else ``settings``
    with that cluster's address and security (none of the own cluster's credentials carried over)."""
    if bootstrap_servers is None:
        return settings
    return settings.model_copy(update={
        "bootstrap_servers": bootstrap_servers,
        "kafka_security_protocol": security_protocol,
        "kafka_sasl_mechanism": sasl_mechanism,
        "kafka_sasl_username": sasl_username,
        "kafka_sasl_password": None if sasl_password is None else SecretStr(sasl_password),
        "kafka_sasl_password_file": None,
        "kafka_ssl_ca_location": None if ssl_ca_location is None else Path(ssl_ca_location),
        "kafka_ssl_certificate_location": None,
        "kafka_ssl_key_location": None,
        "kafka_ssl_key_password": None,
        "kafka_config": {},
    })


def seed_group(settings: Settings, client_id: str, group: str, topic: str, *, earliest: bool = False,
               at: datetime | None = None, offsets: dict[int, int] | None = None,
               timeout: float = 10.0) -> dict[int, int]:
    """Commit a start offset for each partition of ``topic`` that ``group`` has no committed offset for; the
    offsets committed, by partition (empty: every partition had one).

    The start of a partition: ``offsets[partition]`` if given, else its first record (``earliest``), else the
    first record at or after ``at`` (its end when none is). ``BrokerUnavailable`` if the topic does not exist
    or the cluster cannot be asked. A commit refused because a member of the group is running (it seeded the
    group already) is not an error.
    """
    consumer: Any = kafka.consumer(settings, client_id, group, {"enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise BrokerUnavailable(f"topic {topic} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
        committed = consumer.committed(tps, timeout=timeout)
        missing = [tp.partition for tp in committed if tp.offset < 0]
        if not missing:
            return {}
        starts: dict[int, int] = {}
        timed = []
        for p in missing:
            if offsets and p in offsets:
                starts[p] = offsets[p]
            elif earliest:
                starts[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[0]
            else:
                timed.append(p)
        if timed:
            # No time: a partition starts at its end (offsets_for_times answers OFFSET_END for it as it is).
            asked = [TopicPartition(topic, p, int(at.timestamp() * 1000) if at is not None else OFFSET_END)
                     for p in timed]
            for tp in consumer.offsets_for_times(asked, timeout=timeout):
                starts[tp.partition] = (tp.offset if tp.offset >= 0 else
                                        consumer.get_watermark_offsets(TopicPartition(topic, tp.partition),
                                                                       timeout=timeout)[1])
        try:
            consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in starts.items()], asynchronous=False)
        except KafkaException as exc:
            log.info("group %s not seeded (a member runs it already?): %s", group, exc)
            return {}
        log.info("group %s starts %s at %s", group, topic, starts)
        return starts
    except KafkaException as exc:
        raise BrokerUnavailable(f"start of {topic} for group {group}: {exc}") from None
    finally:
        consumer.close()
