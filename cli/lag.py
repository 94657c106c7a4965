"""`taskstream lag`: how far each consumer of ours is behind the log, per partition.

Three consumer groups commit their positions to the broker, so their lag is
visible from outside: the processor (``<p>-processor`` on ``<p>.events``),
the executors (``<p>-executors`` on ``<p>.ready.*``) and the retry relay
(``<p>-retry-relay`` on ``<p>.retry.*``). Lag is end offset minus committed
offset; a partition the group never committed is read from its beginning
(``auto.offset.reset=earliest``), so its lag is every record still held.
The end is the high watermark asked of the broker now.

The API's read model is not a group: each API process reads ``<p>.state``
from the beginning into its own RocksDB and keeps its position in memory
(``api/read_model.py``), so nothing outside the process knows it. ``lag``
says so and shows the end offsets of ``<p>.state``; with ``--api URL`` it
asks that API's ``/readyz``, which reports whether its read model caught up
and, when ``ready_max_read_model_lag`` is set (the default), its
``read_model_lag`` (end offsets minus its positions, summed over
partitions). Each API process has its own: ask each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from taskstream.schemas import Settings, Topics
from taskstream.schemas.kafka import admin, group_states, partition_lag
from taskstream.schemas.log_reader import group_offsets, watermarks

from ._log import LogError, connect, log_errors, partitions_of, reader

READ_MODEL_NOTE = ("the API's read model has no consumer group: each API process reads {state} from the "
                   "beginning and keeps its position in memory, so its lag cannot be known from outside "
                   "the process (--api URL asks that API's /readyz, which reports it)")


@dataclass(frozen=True, slots=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int | None
    low: int
    end: int

    @property
    def lag(self) -> int:
        return partition_lag(self.committed, self.low, self.end)

    def as_json(self) -> dict[str, Any]:
        return {"group": self.group, "topic": self.topic, "partition": self.partition,
                "committed": self.committed, "end": self.end, "lag": self.lag}


@dataclass(frozen=True, slots=True)
class GroupLag:
    group: str
    role: str
    state: str
    members: int
    partitions: list[PartitionLag]

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)


def groups_of(settings: Settings) -> list[tuple[str, str, list[str]]]:
    """(role, group, topics) of every consumer group of the prefix."""
    t = Topics(settings.prefix)
    return [("processor", t.processor_group, [t.events]), ("executors", t.executor_group, t.all_ready),
            ("retry relay", t.relay_group, t.all_retry)]


def _group_states(client, groups: list[str], timeout: float) -> dict[str, tuple[str, int]]:
    """(state, members) of each group; ("unknown", 0) when the broker does not say."""
    return {group: described or ("unknown", 0) for group, described in group_states(client, groups, timeout).items()}


def measure(settings: Settings, timeout: float = 15.0) -> tuple[list[GroupLag], dict[int, tuple[int, int]]]:
    """Each group's lag per partition, and the (low, high) offsets of ``<p>.state`` for the read model."""
    metadata = connect(settings, timeout)
    t = Topics(settings.prefix)
    counts = {name: partitions_of(settings, metadata, name)
              for _, _, topics in groups_of(settings) for name in topics}
    state_partitions = partitions_of(settings, metadata, t.state)
    consumer = reader(settings, "lag")
    try:
        with log_errors("measuring lag"):
            marks = {name: watermarks(consumer, name, range(n), timeout) for name, n in counts.items()}
            state_marks = watermarks(consumer, t.state, range(state_partitions), timeout)
    finally:
        consumer.close()
    client = admin(settings)  # kept referenced: a collected client fails its pending futures
    states = _group_states(client, [g for _, g, _ in groups_of(settings)], timeout)
    out = []
    for role, group, topics in groups_of(settings):
        with log_errors(f"committed offsets of group {group}"):
            pairs = [(name, p) for name in topics for p in range(counts[name])]
            committed = group_offsets(client, group, pairs, timeout)
        rows = [PartitionLag(group, name, p, committed.get((name, p)), *marks[name][p]) for name, p in pairs]
        state, members = states.get(group, ("unknown", 0))
        out.append(GroupLag(group, role, state, members, rows))
    return out, state_marks


def read_model_verdict(url: str, timeout: float) -> dict[str, Any]:
    """What the API at ``url`` says of its read model in ``/readyz``.

    ``{"caught_up": bool, "detail": str, "lag": int | None}``: ``lag`` is the
    ``read_model_lag`` the API reports (records of ``<p>.state`` it has not
    read: end offsets minus its positions, summed) when it measures it
    (``ready_max_read_model_lag`` set, the default), else None.
    """
    import httpx

    try:
        r = httpx.get(url.rstrip("/") + "/readyz", timeout=timeout)
        body = r.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise LogError(f"the API at {url} did not answer /readyz: {exc}") from None
    check = (body.get("checks") or {}).get("read_model") if isinstance(body, dict) else None
    if check is None:
        raise LogError(f"the API at {url} did not report its read model in /readyz (status {r.status_code})")
    lag = body.get("read_model_lag")
    return {"caught_up": check == "ok", "detail": check, "lag": lag if isinstance(lag, int) else None}


def json_objects(groups: list[GroupLag], state_marks: dict[int, tuple[int, int]], settings: Settings,
                 verdict: dict[str, Any] | None) -> list[dict[str, Any]]:
    rows = [{**p.as_json(), "role": g.role, "group_state": g.state, "members": g.members}
            for g in groups for p in g.partitions]
    state = Topics(settings.prefix).state
    rows.append({"role": "read model", "group": None, "topic": state,
                 "end": sum(hi for _, hi in state_marks.values()),
                 "ends": {str(p): hi for p, (_, hi) in sorted(state_marks.items())},
                 "committed": None, "lag": None if verdict is None else verdict["lag"],
                 "caught_up": None if verdict is None else verdict["caught_up"],
                 "note": READ_MODEL_NOTE.format(state=state)})
    return rows


def table_lines(groups: list[GroupLag], state_marks: dict[int, tuple[int, int]], settings: Settings,
                verdict: dict[str, Any] | None, api_url: str | None) -> list[str]:
    out = []
    for g in groups:
        members = f", {g.members} member(s)" if g.members else ""
        out.append(f"{g.group} ({g.role}): {g.state}{members}, lag {g.lag}")
        rows = [("  TOPIC", "PARTITION", "COMMITTED", "END", "LAG")]
        rows += [(f"  {p.topic}", str(p.partition), "-" if p.committed is None else str(p.committed),
                  str(p.end), str(p.lag)) for p in g.partitions]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]  # the last column is not padded
        out += ["  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]).rstrip() for r in rows]
    state = Topics(settings.prefix).state
    ends = " ".join(f"{p}:{hi}" for p, (_, hi) in sorted(state_marks.items()))
    if verdict is None:
        said = READ_MODEL_NOTE.format(state=state)
    else:
        said = f"the API at {api_url} reports it {'caught up' if verdict['caught_up'] else verdict['detail']}" + (
            f", lag {verdict['lag']} (summed over partitions)" if verdict["lag"] is not None else
            " (it does not report a lag: ready_max_read_model_lag is off)")
    out.append(f"read model ({state}, end offsets {ends}): {said}")
    return out
