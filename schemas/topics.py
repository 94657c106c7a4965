"""The topic catalogue (DESIGN §2): every topic name is built here and only here."""

from __future__ import annotations

from dataclasses import dataclass, field

from .events import Priority
from .limits import MAX_RECORD_BYTES
from .settings import Settings

PRIORITIES: tuple[Priority, ...] = (Priority.HIGH, Priority.MEDIUM, Priority.LOW)
DAY_MS = 24 * 3600 * 1000
#: Retry topic tiers: (name, longest backoff in seconds it holds). A waiting
#: attempt goes to the first tier whose bound is at least its delay; the last
#: tier holds everything longer. Tiers keep short waits from queueing behind
#: long ones and let operators see at a glance how much waits how long.
RETRY_TIERS: tuple[tuple[str, float], ...] = (("5s", 5), ("1m", 60), ("10m", 600), ("1h", 3600), ("1d", 86400))


def retry_tier(delay_s: float) -> str:
    """The retry tier a wait of ``delay_s`` seconds goes to."""
    for name, bound in RETRY_TIERS:
        if delay_s <= bound:
            return name
    return RETRY_TIERS[-1][0]


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str

    @property
    def events(self) -> str:
        return f"{self.prefix}.events"

    @property
    def state(self) -> str:
        return f"{self.prefix}.state"

    def ready(self, priority: str) -> str:
        return f"{self.prefix}.ready.{priority}"

    @property
    def all_ready(self) -> list[str]:
        return [self.ready(p) for p in PRIORITIES]

    def retry(self, tier: str) -> str:
        return f"{self.prefix}.retry.{tier}"

    @property
    def all_retry(self) -> list[str]:
        return [self.retry(name) for name, _ in RETRY_TIERS]

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.dlq"

    @property
    def heartbeats(self) -> str:
        return f"{self.prefix}.heartbeats"

    @property
    def admin(self) -> str:
        """API keys (``ApiKey`` records keyed by key id, compacted), folded by every API replica."""
        return f"{self.prefix}.admin"

    @property
    def workers(self) -> str:
        """Executors reporting themselves (``WorkerReport`` records keyed by executor id, compacted), folded by the
        API (``api.workers``)."""
        return f"{self.prefix}.workers"

    @property
    def processor_group(self) -> str:
        return f"{self.prefix}-processor"

    @property
    def executor_group(self) -> str:
        return f"{self.prefix}-executors"

    @property
    def relay_group(self) -> str:
        return f"{self.prefix}-retry-relay"


def catalogue(settings: Settings) -> list[TopicSpec]:
    """Every topic taskstream owns, with partitions and cleanup policy."""
    t = Topics(settings.prefix)
    n = settings.partitions
    big = {"max.message.bytes": str(MAX_RECORD_BYTES)}  # a task's state, or a ready message, at every limit
    return [
        TopicSpec(t.events, n, {"cleanup.policy": "delete", "retention.ms": "-1", **big}),
        TopicSpec(t.state, n, {"cleanup.policy": "compact", **big}),
        *(TopicSpec(t.ready(p), n, {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS), **big})
          for p in PRIORITIES),
        *(TopicSpec(t.retry(name), n, {"cleanup.policy": "delete", "retention.ms": str(14 * DAY_MS), **big})
          for name, _ in RETRY_TIERS),
        TopicSpec(t.dlq, n, {"cleanup.policy": "delete", "retention.ms": str(90 * DAY_MS), **big}),
        TopicSpec(t.heartbeats, n, {"cleanup.policy": "delete", "retention.ms": str(3600 * 1000)}),
        TopicSpec(t.admin, 1, {"cleanup.policy": "compact"}),  # a few records: one partition keeps them in order
        # One record per executor, rewritten every few seconds: compacted to the latest, and deleted a day after
        # the last one (an executor killed before its tombstone); the broker's clock stamps every report, so
        # readers judge liveness on one clock (docs/decisions/0021-workers-topic.md).
        TopicSpec(t.workers, 1, {"cleanup.policy": "compact,delete", "retention.ms": str(DAY_MS),
                                 "segment.ms": str(3600 * 1000), "message.timestamp.type": "LogAppendTime"}),
    ]
