"""`taskstream topics list|create|describe`: our topics as the broker has them, against the catalogue.

The catalogue (``schemas.topics.catalogue``) says which topics a prefix
owns, with partition counts and the configs we set (``cleanup.policy``,
``retention.ms``, ``max.message.bytes``). ``inspect`` compares each with
what the broker reports: a missing topic, a different partition count or
any config of the catalogue with another value is a problem
(``schemas.kafka.topic_problems``, the check every component makes at
start-up; ``create`` exits non-zero on one rather than run on a topic that
would break us: the processor's table lives in the partition of its events,
a compacted events log would lose history, a smaller record limit refuses
large tasks). A config the broker does not report is shown as ``?`` and not
judged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from taskstream.schemas import BrokerUnavailable, Settings, TopicSpec, catalogue
from taskstream.schemas.kafka import admin, config_problems, ensure_topics, topic_configs
from taskstream.schemas.log_reader import watermarks

from ._log import LogError, connect, log_errors, reader

#: Configs shown in lists and descriptions (every config of the catalogue is judged).
SHOWN = ("cleanup.policy", "retention.ms")


@dataclass(frozen=True, slots=True)
class TopicReport:
    spec: TopicSpec
    exists: bool
    partitions: int | None = None
    config: dict[str, str | None] = field(default_factory=dict)  # None: not reported by the broker

    @property
    def problems(self) -> list[str]:
        """What makes the topic unusable as it is (the wording ``topics create`` prints)."""
        if not self.exists:
            return [f"topic {self.spec.name} does not exist"]
        out = []
        if self.partitions != self.spec.partitions:
            out.append(f"topic {self.spec.name} has {self.partitions} partitions, expected {self.spec.partitions}")
        return out + config_problems(self.spec, self.config)

    @property
    def differences(self) -> list[str]:
        """Every difference from the catalogue, for people: ``partitions 2 (expected 3)``."""
        if not self.exists:
            return []
        out = []
        if self.partitions != self.spec.partitions:
            out.append(f"partitions {self.partitions} (expected {self.spec.partitions})")
        for key in dict.fromkeys([*SHOWN, *self.spec.config]):
            want, have = self.spec.config.get(key), self.config.get(key)
            if want is not None and have is not None and have != want:
                out.append(f"{key} {have} (expected {want})")
        return out

    @property
    def status(self) -> str:
        if not self.exists:
            return "missing"
        return "differs: " + "; ".join(self.differences) if self.differences else "ok"

    def as_json(self) -> dict[str, Any]:
        return {"topic": self.spec.name, "exists": self.exists, "partitions": self.partitions,
                "expected_partitions": self.spec.partitions,
                "config": {k: self.config.get(k) for k in SHOWN},
                "expected_config": {k: self.spec.config.get(k) for k in SHOWN},
                "problems": self.problems if self.exists else [], "differences": self.differences}


def _configs(settings: Settings, names: list[str], timeout: float) -> dict[str, dict[str, str | None]]:
    try:
        return topic_configs(admin(settings), names, timeout)
    except BrokerUnavailable as exc:
        raise LogError(str(exc)) from None


def inspect(settings: Settings, timeout: float = 15.0, *, metadata: dict[str, int] | None = None) -> list[TopicReport]:
    """Each catalogue topic of ``settings`` as the broker has it (``metadata``: ``connect``'s partition counts)."""
    topics = metadata if metadata is not None else connect(settings, timeout)
    specs = catalogue(settings)
    existing = [s.name for s in specs if topics.get(s.name)]
    configs = _configs(settings, existing, timeout)
    return [TopicReport(s, True, topics[s.name], configs.get(s.name, {})) if s.name in existing
            else TopicReport(s, False) for s in specs]


def extra_topics(settings: Settings, metadata: dict[str, int]) -> list[str]:
    """Topics named ``<prefix>.*`` that the catalogue does not know (leftovers, typos)."""
    known = {s.name for s in catalogue(settings)}
    return sorted(n for n in metadata if n.startswith(settings.prefix + ".") and n not in known)


def create(settings: Settings, timeout: float = 15.0) -> list[TopicReport]:
    """Create the missing catalogue topics (idempotent); the reports after that."""
    connect(settings, timeout)
    try:
        ensure_topics(settings, catalogue(settings), timeout=timeout)
    except BrokerUnavailable as exc:
        raise LogError(str(exc)) from None
    return inspect(settings, timeout)


def resolve(settings: Settings, name: str, metadata: dict[str, int]) -> str:
    """A topic name as given (``<prefix>.events``, any existing topic) or short (``events``, ``ready.high``)."""
    return name if name.startswith(settings.prefix + ".") or name in metadata else f"{settings.prefix}.{name}"


@dataclass(frozen=True, slots=True)
class TopicDescription:
    report: TopicReport
    offsets: dict[int, tuple[int, int]]  # partition -> (low, high)

    def as_json(self) -> dict[str, Any]:
        return {**self.report.as_json(), "offsets": [{"partition": p, "low": lo, "high": hi, "records": hi - lo}
                                                     for p, (lo, hi) in sorted(self.offsets.items())]}


def describe(settings: Settings, names: list[str], timeout: float = 15.0) -> list[TopicDescription]:
    """Config and per-partition (low, high) offsets of the given topics (all of the catalogue if none).

    ``LogError`` if a named topic does not exist, or if none of the catalogue does (a bad prefix).
    """
    metadata = connect(settings, timeout)
    reports = {r.spec.name: r for r in inspect(settings, timeout, metadata=metadata)}
    if names:
        wanted = [resolve(settings, n, metadata) for n in names]
        for n in wanted:
            if not metadata.get(n):
                raise LogError(f"topic {n} does not exist at {settings.bootstrap_servers}"
                               + ("" if n in reports else f" (catalogue topics: {', '.join(reports)})"))
        for n in wanted:
            if n not in reports:  # a topic of ours the catalogue does not know: describe it as it is
                spec = TopicSpec(n, metadata[n])
                reports[n] = TopicReport(spec, True, metadata[n],
                                         _configs(settings, [n], timeout).get(n, {}))
    else:
        wanted = [n for n, r in reports.items() if r.exists]
        if not wanted:
            raise LogError(f"no topic of prefix {settings.prefix} exists at {settings.bootstrap_servers} "
                           "(wrong TASKSTREAM_PREFIX? `taskstream topics create` makes them)")
    consumer = reader(settings, "topics")
    try:
        with log_errors("describing topics"):
            # every wanted topic exists: its partition count is the broker's (metadata)
            return [TopicDescription(reports[n], watermarks(consumer, n, range(metadata[n]), timeout))
                    for n in wanted]
    finally:
        consumer.close()


# ---------------------------------------------------------------- output


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]  # the last column is not padded
    return ["  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]).rstrip() for r in rows]


def list_lines(reports: list[TopicReport], extras: list[str]) -> list[str]:
    rows = [("TOPIC", "PARTITIONS", "CLEANUP.POLICY", "RETENTION.MS", "STATUS")]
    for r in reports:
        shown = r.config if r.exists else r.spec.config
        rows.append((r.spec.name, str(r.partitions if r.exists else r.spec.partitions),
                     shown.get("cleanup.policy") or "?", shown.get("retention.ms") or "?", r.status))
    rows += [(name, "", "", "", "not in the catalogue") for name in extras]
    return _table(rows)


def describe_lines(descriptions: list[TopicDescription]) -> list[str]:
    out = []
    for d in descriptions:
        r = d.report
        config = "  ".join(f"{k}={r.config.get(k) or '?'}" for k in SHOWN)
        total = sum(hi - lo for lo, hi in d.offsets.values())
        out.append(f"{r.spec.name}  partitions={r.partitions}  {config}  records={total}  ({r.status})")
        rows = [("  PARTITION", "LOW", "HIGH", "RECORDS")]
        rows += [(f"  {p}", str(lo), str(hi), str(hi - lo)) for p, (lo, hi) in sorted(d.offsets.items())]
        out += _table(rows)
    return out
