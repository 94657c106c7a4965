"""The seam of the short-lived readers maps every library error to ours, with what was asked and why.

The clients here talk to a port nobody listens on: real librdkafka errors, no broker needed.
"""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError, KafkaException, Message

from taskstream.cli.broker import free_port
from taskstream.schemas import BrokerUnavailable, RecordRefused, Settings, kafka
from taskstream.schemas.log_reader import (
    broker_count,
    broker_errors,
    end_offsets,
    group_offsets,
    headers_of,
    position,
    reason,
    timed_out,
    topic_partitions,
    watermarks,
)


@pytest.fixture
def nobody() -> Settings:
    logging.getLogger("taskstream.librdkafka").setLevel(logging.CRITICAL)
    return Settings(bootstrap_servers=f"127.0.0.1:{free_port()}")


def test_broker_errors_say_what_failed_and_keep_the_library_error_as_cause() -> None:
    cause = KafkaException(KafkaError(KafkaError._TRANSPORT, "Local: Broker transport failure"))
    with pytest.raises(BrokerUnavailable) as err:
        with broker_errors("reading p.events"):
            raise cause
    assert str(err.value) == f"reading p.events: {cause}" and "Broker transport failure" in str(err.value)
    assert err.value.__cause__ is cause and not isinstance(err.value, RecordRefused)


def test_a_record_refused_for_good_is_record_refused() -> None:
    with pytest.raises(RecordRefused, match="^copying: "):
        with broker_errors("copying"):
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))


def test_other_errors_pass_through_unchanged() -> None:
    with pytest.raises(ValueError, match="^mine$"):
        with broker_errors("anything"):
            raise ValueError("mine")


def test_a_timeout_mapped_at_the_seam_can_be_told() -> None:
    with pytest.raises(BrokerUnavailable) as err:
        with broker_errors("end offsets of p.events"):
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "Local: Timed out"))
    assert timed_out(err.value)


def test_watermarks_of_an_unreachable_broker_are_broker_unavailable(nobody: Settings) -> None:
    consumer = kafka.reader(nobody, "test-log-reader", "test-log-reader")
    try:
        with pytest.raises(BrokerUnavailable, match="^end offsets of p.events: "):
            watermarks(consumer, "p.events", [0, 1], 0.5)
        with pytest.raises(BrokerUnavailable, match="^end offsets of p.state: "):
            end_offsets(consumer, "p.state", range(1), 0.5)
    finally:
        consumer.close()


def test_reason_is_the_library_error_in_its_own_words() -> None:
    with pytest.raises(BrokerUnavailable) as err:
        with broker_errors("listing topics"):
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Failed to get metadata: Local: Timed out"))
    assert "KafkaError{" in str(err.value)
    assert reason(err.value) == "Failed to get metadata: Local: Timed out"
    assert reason(BrokerUnavailable("topic p.events is not available")) == "topic p.events is not available"


def test_metadata_of_an_unreachable_broker_is_broker_unavailable(nobody: Settings) -> None:
    client = kafka.admin(nobody)
    with pytest.raises(BrokerUnavailable) as err:
        topic_partitions(client, 0.5)
    assert reason(err.value).startswith("Failed to get metadata")
    with pytest.raises(BrokerUnavailable, match="^asking for the cluster's brokers: "):
        broker_count(client, 0.5)
    with pytest.raises(BrokerUnavailable, match="^offsets of group g: "):
        group_offsets(client, "g", [("p.events", 0), ("p.events", 1)], 0.5)
    assert group_offsets(client, "g", [], 0.5) == {}  # nothing to ask: no request at all


def test_position_is_the_partition_and_offset_of_a_consumed_message() -> None:
    assert position(Message(topic="p.events", partition=2, offset=17)) == (2, 17)
    with pytest.raises(ValueError, match="not a consumed message"):
        position(Message(topic="p.events"))  # what the library types as possible: neither is set


def test_headers_of_a_record_are_name_and_bytes_pairs_in_order() -> None:
    assert headers_of(Message(headers=[("b", b"2"), ("a", None), ("b", b"3")])) == [("b", b"2"), ("a", None),
                                                                                   ("b", b"3")]
    assert headers_of(Message()) == []
    assert headers_of(Message(headers={"a": "x"})) == [("a", b"x")]  # the other shape the library types allow
