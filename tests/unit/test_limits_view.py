"""The live view of concurrency keys (``api.read_model.GateStore``, ``api.routes.limits.gate_json``), no broker.

Contract under test: the read model keeps the latest gate of each key
(never an older version over a newer), lists them in key order with a
cursor, and keeps totals without a scan; a key's entry says how many hold
a slot and wait, the rate used at a time, what holds the waiting back and
when the rate lets the next one start.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from taskstream.api.read_model import TaskStore
from taskstream.api.routes.limits import gate_json
from taskstream.schemas import GateState, SlotRequested
from taskstream.streams import domain

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _gate(key: str, *holders_then_waiting: str, limit: int = 0, rate: int | None = None) -> GateState:
    g = None
    for task in holders_then_waiting:
        g = domain.evolve(g, SlotRequested(gate_id=domain.gate_id(key), occurred_at=T0, producer="p", holder=task,
                                           attempt=1, limit=limit, rate=rate, per_s=None if rate is None else 1.0))
    assert isinstance(g, GateState)
    return g


def test_the_store_keeps_the_latest_gate_of_each_key_in_key_order(tmp_path):
    store = TaskStore(tmp_path / "rm")
    try:
        gates = store.gates
        b, a = _gate("b", "t1", "t2", limit=1), _gate("a", "t3", limit=2)
        assert gates.apply(b) and gates.apply(a)
        assert not gates.apply(_gate("b", "t1", limit=1))  # an older version
        assert gates.get("concurrency:b") == b
        page, last = gates.list(limit=1)
        assert [g.gate_id for g in page] == ["concurrency:a"] and last == b"concurrency:a"
        page, last = gates.list(limit=1, after=last)
        assert [g.gate_id for g in page] == ["concurrency:b"] and last is None
        assert gates.totals() == (2, 2, 1)  # keys, holding, waiting
    finally:
        store.close()


def test_an_entry_says_what_holds_the_waiting_back():
    by_limit = gate_json(_gate("k", "t1", "t2", "t3", limit=1), T0)
    assert (by_limit["key"], by_limit["holding"], by_limit["waiting"], by_limit["blocked_by"]) == ("k", 1, 2, "limit")
    assert by_limit["waiting_tasks"] == ["t2", "t3"] and by_limit["holders"] == [{"task_id": "t1", "attempt": 1}]
    assert by_limit["rate"] is None and by_limit["rate_used"] is None and by_limit["next_start_at"] is None

    by_rate = gate_json(_gate("r", "t1", "t2", "t3", rate=2), T0)
    assert (by_rate["limit"], by_rate["holding"], by_rate["waiting"], by_rate["blocked_by"]) == (None, 2, 1, "rate")
    assert by_rate["rate_used"] == 2 and by_rate["next_start_at"].startswith("2026-12-07T12:00:01.001")
    later = gate_json(_gate("r", "t1", "t2", "t3", rate=2), T0 + timedelta(seconds=2))
    assert later["rate_used"] == 0  # the starts are back (the gate admits the waiter at its next event)

    idle = gate_json(_gate("i", "t1", limit=5), T0)
    assert idle["blocked_by"] is None and idle["waiting"] == 0
