"""The workers directory's rule (``api.workers``) and the executor's report (``executors.presence``), without Kafka.

Contract: a tombstone removes a worker; a newer report replaces an older one
and an older one read later changes nothing; a worker is alive up to three
of its own report intervals after its last report, gone after that, no
longer listed an hour after it (or three intervals, if longer); the listing
puts alive ones first; the JSON names the bound.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from taskstream.api import workers as rule
from taskstream.api.workers import ALIVE, FORGET_AFTER_S, GONE, GONE_AFTER_INTERVALS, Worker, fold, status
from taskstream.executors import presence
from taskstream.schemas import codec

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def a_report(executor_id: str = "ex-1", at: datetime = T0, interval_s: float = 5.0, host: str = "h1", **kw):
    fields = dict(executor_id=executor_id, host=host, pid=7, version="0.1.0", handlers=["noop", "echo"],
                  concurrency=4, partitions=[("p.ready.high", 1), ("p.ready.low", 0)], running=["t1", "t2"],
                  started_at=T0 - timedelta(minutes=5), now=at, interval_s=interval_s)
    fields.update(kw)
    return presence.report(**fields)


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def test_report_sorts_and_bounds_what_it_carries():
    r = a_report(running=[f"t{i}" for i in range(250)])
    assert r.handlers == ["echo", "noop"]
    assert r.partitions == ["p.ready.high:1", "p.ready.low:0"]
    assert r.in_flight == 250 and len(r.running) == presence.MAX_RUNNING_IDS and r.running[0] == "t0"
    assert codec.decode(codec.encode(r)) == r


def test_a_report_makes_a_worker_and_a_tombstone_removes_it():
    workers: dict[str, Worker] = {}
    fold(workers, "ex-1", a_report(), T0)
    assert set(workers) == {"ex-1"} and workers["ex-1"].seen_at == T0
    fold(workers, "ex-1", None, None)
    assert workers == {}
    fold(workers, "ex-2", None, None)  # a tombstone of a worker never seen: nothing happens
    assert workers == {}


def test_a_newer_report_replaces_and_an_older_one_read_later_is_ignored():
    workers: dict[str, Worker] = {}
    fold(workers, "ex-1", a_report(running=["new"]), T0 + s(10))
    fold(workers, "ex-1", a_report(running=["old"]), T0)
    assert workers["ex-1"].report.running == ["new"]
    fold(workers, "ex-1", a_report(running=["newer"]), T0 + s(15))
    assert workers["ex-1"].report.running == ["newer"] and workers["ex-1"].seen_at == T0 + s(15)


def test_without_a_broker_stamp_the_reports_own_time_counts():
    workers: dict[str, Worker] = {}
    fold(workers, "ex-1", a_report(at=T0 + s(3)), None)
    assert workers["ex-1"].seen_at == T0 + s(3)


@pytest.mark.parametrize(("interval_s", "age_s", "expected"), [
    (5.0, 0, ALIVE),
    (5.0, 14.9, ALIVE),
    (5.0, 15.0, ALIVE),  # exactly three intervals: still alive
    (5.0, 15.1, GONE),
    (0.5, 1.6, GONE),  # the bound is the worker's own interval
    (0.5, 1.4, ALIVE),
    (5.0, FORGET_AFTER_S, GONE),
    (5.0, FORGET_AFTER_S + 1, None),  # no longer listed
    (3000.0, FORGET_AFTER_S + 1, ALIVE),  # an interval longer than the forget bound: alive for three of them
    (3000.0, 9001, None),
])
def test_status_by_age(interval_s, age_s, expected):
    worker = Worker(a_report(interval_s=interval_s), T0)
    assert status(worker, T0 + s(age_s)) == expected
    assert GONE_AFTER_INTERVALS == 3


def test_a_clock_behind_the_broker_shows_a_fresh_worker_alive():
    assert status(Worker(a_report(), T0), T0 - s(2)) == ALIVE


def test_listing_puts_alive_first_and_leaves_forgotten_ones_out():
    workers: dict[str, Worker] = {}
    fold(workers, "b-alive", a_report("b-alive", host="h2"), T0 + s(100))
    fold(workers, "a-gone", a_report("a-gone", host="h1"), T0 + s(50))
    fold(workers, "a-alive", a_report("a-alive", host="h1"), T0 + s(99))
    fold(workers, "forgotten", a_report("forgotten"), T0 - s(FORGET_AFTER_S))
    shown = rule.listing(workers, T0 + s(101))
    assert [(w.report.executor_id, st) for w, st in shown] == [("a-alive", ALIVE), ("b-alive", ALIVE),
                                                               ("a-gone", GONE)]


def test_worker_json_names_partitions_and_the_bound():
    worker = Worker(a_report(interval_s=2.0), T0)
    body = rule.worker_json(worker, ALIVE, T0 + s(1.5))
    assert body["id"] == "ex-1" and body["status"] == ALIVE and body["host"] == "h1" and body["pid"] == 7
    assert body["partitions"] == [{"topic": "p.ready.high", "partition": 1}, {"topic": "p.ready.low", "partition": 0}]
    assert body["handlers"] == ["echo", "noop"] and body["concurrency"] == 4
    assert body["in_flight"] == 2 and body["running"] == ["t1", "t2"]
    assert body["last_seen"] == "2026-12-07T12:00:00Z" and body["last_seen_age_s"] == 1.5
    assert body["gone_after_s"] == 6.0 and body["gone_at"] == "2026-12-07T12:00:06Z"
    assert body["started_at"] == "2026-12-07T11:55:00Z"


def test_cli_table_shows_partitions_by_topic_and_the_age():
    from rich.console import Console

    from taskstream.cli.workers import workers_table
    from taskstream.client import Worker as ClientWorker

    report = a_report(partitions=[("p.ready.high", 2), ("p.ready.high", 0), ("p.ready.low", 1)])
    worker = ClientWorker.from_json(rule.worker_json(Worker(report, T0), GONE, T0 + s(20)))
    assert worker.partitions == [("p.ready.high", 0), ("p.ready.high", 2), ("p.ready.low", 1)]
    out = Console(width=300, record=True)
    out.print(workers_table([worker], T0 + s(20)))
    text = out.export_text()
    assert "ready.high[0,2] ready.low[1]" in text and "gone" in text and "20.0 s ago" in text and "2/4" in text
    out = Console(width=300, record=True)
    out.print(workers_table([], T0))
    assert "no executor reports itself" in out.export_text()

