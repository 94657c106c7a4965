"""The seam of the short-lived readers maps every library error to ours, with what was asked and why.

The clients here talk to a port nobody listens on: real librdkafka errors, no broker needed.
"""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError, KafkaException

from taskstream.cli.broker import free_port
from taskstream.schemas import BrokerUnavailable, RecordRefused, Settings
from taskstream.schemas import kafka
from taskstream.schemas.log_reader import (
    broker_count,
    broker_errors,
    end_offsets,
    group_offsets,
    reason,
    topic_partitions,
    watermarks,
)


@pytest.fixture
def nobody() -> Settings:
    logging.getLogger("taskstream.librdkafka").setLevel(logging.CRITICAL)
    return Settings(bootstrap_servers=f"127.0.0.1:{free_port()}")


def test_broker_errors_say_what_failed_in_the_brokers_words() -> None:
    with pytest.raises(BrokerUnavailable) as err:
        with broker_errors("reading p.events"):
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Local: Broker transport failure"))
    assert str(err.value) == "reading p.events: Local: Broker transport failure"
    assert not isinstance(err.value, RecordRefused)


def test_a_record_refused_for_good_is_record_refused() -> None:
    with pytest.raises(RecordRefused, match="^copying: "):
        with broker_errors("copying"):
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))


def test_other_errors_pass_through_unchanged() -> None:
    with pytest.raises(ValueError, match="^mine$"):
        with broker_errors("anything"):
            raise ValueError("mine")


def test_reason_of_a_bare_timeout_says_so() -> None:
    assert reason(TimeoutError()) == "timed out"
    assert reason(KafkaException(KafkaError(KafkaError._TIMED_OUT, "Local: Timed out"))) == "Local: Timed out"


def test_watermarks_of_an_unreachable_broker_are_broker_unavailable(nobody: Settings) -> None:
    consumer = kafka.reader(nobody, "test-log-reader", "test-log-reader")
    try:
        with pytest.raises(BrokerUnavailable, match="^end offsets of p.events: "):
            watermarks(consumer, "p.events", [0, 1], 0.5)
        with pytest.raises(BrokerUnavailable, match="^end offsets of p.state: "):
            end_offsets(consumer, "p.state", range(1), 0.5)
    finally:
        consumer.close()


def test_metadata_of_an_unreachable_broker_is_broker_unavailable(nobody: Settings) -> None:
    client = kafka.admin(nobody)
    with pytest.raises(BrokerUnavailable):
        topic_partitions(client, 0.5)
    with pytest.raises(BrokerUnavailable):
        broker_count(client, 0.5)
    with pytest.raises(BrokerUnavailable, match="^committed offsets of group g: "):
        group_offsets(client, "g", {"p.events": 2}, 0.5)
    assert group_offsets(client, "g", {"p.events": 0}, 0.5) == {}  # nothing to ask: no request at all
