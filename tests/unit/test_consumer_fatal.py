"""Which consumer errors the runtime treats as fatal (schemas/consumer.py: the member rebuilds its client)."""

from __future__ import annotations

from confluent_kafka import KafkaError

from taskstream.schemas.consumer import is_fatal


def test_a_fatal_error_event_is_fatal_though_the_library_does_not_say_so() -> None:
    # What a fenced static member's poll returns: code _FATAL, fatal() False, the cause in the text.
    event = KafkaError(KafkaError._FATAL, "Fatal error: Broker: Static consumer fenced by other consumer with same "
                       "group.instance.id")
    assert not event.fatal()
    assert is_fatal(event)


def test_an_error_flagged_fatal_is_fatal_and_others_are_not() -> None:
    assert is_fatal(KafkaError(KafkaError.FENCED_INSTANCE_ID, fatal=True))
    for code in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError.UNKNOWN_MEMBER_ID,
                 KafkaError._PARTITION_EOF):
        assert not is_fatal(KafkaError(code))
