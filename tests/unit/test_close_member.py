"""``close_member`` (schemas/kafka.py): when a group member may leave (the broker side is in test_group_leave.py)."""

from __future__ import annotations

import threading

from taskstream.schemas import Settings
from taskstream.schemas.kafka import close_member


class Member:
    """Records what close_member does with a consumer (no broker: the embedded-broker path is an integration test)."""

    def __init__(self) -> None:
        self.polls = 0
        self.closed = False

    def poll(self, timeout):
        self.polls += 1

    def close(self):
        self.closed = True


def test_on_kafka_or_redpanda_a_member_leaves_at_once_even_before_its_first_assignment():
    member = Member()
    close_member(member, threading.Event(), Settings(bootstrap_servers="127.0.0.1:1", embedded_broker=False), "g")
    assert member.closed and member.polls == 0


def test_on_the_embedded_broker_a_member_that_cannot_reach_it_still_leaves_within_its_deadline():
    member = Member()
    settings = Settings(bootstrap_servers="127.0.0.1:1", embedded_broker=True, session_timeout_ms=1000)
    close_member(member, threading.Event(), settings, "g")  # never joined, coordinator unreachable
    assert member.closed and member.polls >= 1
