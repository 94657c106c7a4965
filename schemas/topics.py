"""The topic catalogue (DESIGN §2): every topic name is built here and only here."""

from __future__ import annotations

from dataclasses import dataclass, field

from .events import Priority
from .settings import Settings

PRIORITIES: tuple[Priority, ...] = (Priority.HIGH, Priority.MEDIUM, Priority.LOW)
DAY_MS = 24 * 3600 * 1000


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

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.dlq"

    @property
    def heartbeats(self) -> str:
        return f"{self.prefix}.heartbeats"

    @property
    def processor_group(self) -> str:
        return f"{self.prefix}-processor"

    @property
    def executor_group(self) -> str:
        return f"{self.prefix}-executors"


def catalogue(settings: Settings) -> list[TopicSpec]:
    """Every topic taskstream owns, with partitions and cleanup policy."""
    t = Topics(settings.prefix)
    n = settings.partitions
    return [
        TopicSpec(t.events, n, {"cleanup.policy": "delete", "retention.ms": "-1"}),
        TopicSpec(t.state, n, {"cleanup.policy": "compact"}),
        *(TopicSpec(t.ready(p), n, {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)}) for p in PRIORITIES),
        TopicSpec(t.dlq, n, {"cleanup.policy": "delete", "retention.ms": str(90 * DAY_MS)}),
        TopicSpec(t.heartbeats, n, {"cleanup.policy": "delete", "retention.ms": str(3600 * 1000)}),
    ]
