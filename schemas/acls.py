"""The Kafka ACLs of a taskstream deployment, derived from the topic catalogue: one principal per component.

Pure data, no client: ``acls(topics, principals)`` lists what the API, the
processors (with their retry relay) and the executors may do, and nothing
more; ``schemas.kafka.apply_acls`` writes them to a cluster and `taskstream
acls plan|apply` is the command on top, so operators do not hand-write them.
The operator's own tools (`topics create`, `keys`, `dlq redrive`, `events
replay`, `state rebuild --write`, `acls apply`) run as an admin principal (a
``super.users`` entry of the cluster), which needs no ACL and is the only one
that may write ``<p>.admin`` (API keys). Why these grants:
docs/decisions/0018-kafka-principals-and-acls.md.

- **api**: reads events (history), state (read model), admin (API keys)
  and workers (executor reports); writes events.
- **processor** (with its retry relay): reads events, state (table
  restore), retry.* and heartbeats; writes events, state, ready.*, retry.*
  and dlq; reads (joins) its group and the relay's and sets their timeouts
  (group configs, under the consumer group protocol); writes and describes
  transactional ids under ``<p>-processor`` (none today: room for
  exactly-once).
- **executor**: reads ready.*; writes events, heartbeats, workers (its
  presence reports) and dlq (a poison ready message goes there, as from
  every consumer); reads (joins) the executor group and sets its timeouts.

Every principal also describes the topics under ``<p>.`` (names, partitions,
offsets and configs: what the start-up checks and the lag figures read;
never a record) and the groups under ``<p>-``: a consumer that only
``assign()``s (the read model, the key store, history reads, the heartbeat
tail) joins no group, but librdkafka wants a group id and looks up its
coordinator, which takes Describe on it (``schemas.kafka.reader``). Each
may also ``IdempotentWrite`` on the cluster: every producer of ours is
idempotent, and Redpanda (like Kafka before 3.0) asks for it, where Kafka 3+
lets a topic Write suffice; it lets a principal get a producer id, no more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .topics import Topics

ResourceKind = Literal["topic", "group", "transactional_id", "cluster"]
Pattern = Literal["literal", "prefixed"]
Operation = Literal["read", "write", "describe", "describe_configs", "alter_configs", "idempotent_write"]

#: The name of the one cluster resource.
CLUSTER = "kafka-cluster"

@dataclass(frozen=True, slots=True, order=True)
class Acl:
    """Allow ``principal`` (``User:name``) ``operation`` on the resource ``kind``/``name`` (``pattern``: the
    name itself, or every name that starts with it), from any host."""

    principal: str
    kind: ResourceKind
    name: str
    pattern: Pattern
    operation: Operation

    def __str__(self) -> str:
        pattern = "" if self.pattern == "literal" else " (prefix)"
        return f"{self.principal} {self.operation} {self.kind} {self.name}{pattern}"


@dataclass(frozen=True, slots=True)
class Principals:
    """The Kafka principal of each component, as the cluster names them (``User:<SASL user>``)."""

    api: str
    processor: str
    executor: str

    def __post_init__(self) -> None:
        for role in ("api", "processor", "executor"):
            value = getattr(self, role)
            kind, _, name = value.partition(":")
            if not kind or not name:
                raise ValueError(f"principal of the {role}: {value!r} is not of the form User:<name>")
        names = [self.api, self.processor, self.executor]
        if len(set(names)) != len(names):
            raise ValueError("api, processor and executor need principals of their own (least privilege)")


def transactional_id_prefix(topics: Topics) -> str:
    """The prefix every transactional id of a processor starts with (the grant is on the prefix)."""
    return topics.processor_group


def acls(topics: Topics, principals: Principals) -> list[Acl]:
    """Every ACL the components of ``topics.prefix`` need (the table in the module docstring), sorted."""
    out: list[Acl] = []

    def allow(principal: str, operations: tuple[Operation, ...], kind: ResourceKind, name: str,
              pattern: Pattern = "literal") -> None:
        out.extend(Acl(principal, kind, name, pattern, op) for op in operations)

    every_topic, every_group = f"{topics.prefix}.", f"{topics.prefix}-"
    ready, retry = f"{topics.prefix}.ready.", f"{topics.prefix}.retry."
    for principal in (principals.api, principals.processor, principals.executor):
        allow(principal, ("describe", "describe_configs"), "topic", every_topic, "prefixed")
        allow(principal, ("describe",), "group", every_group, "prefixed")
        allow(principal, ("idempotent_write",), "cluster", CLUSTER)

    api = principals.api
    allow(api, ("read", "write"), "topic", topics.events)
    allow(api, ("read",), "topic", topics.state)
    allow(api, ("read",), "topic", topics.admin)
    allow(api, ("read",), "topic", topics.workers)

    processor = principals.processor
    allow(processor, ("read", "write"), "topic", topics.events)
    allow(processor, ("read", "write"), "topic", topics.state)
    allow(processor, ("write",), "topic", ready, "prefixed")
    allow(processor, ("read", "write"), "topic", retry, "prefixed")
    allow(processor, ("write",), "topic", topics.dlq)
    allow(processor, ("read",), "topic", topics.heartbeats)
    for group in (topics.processor_group, topics.relay_group):
        allow(processor, ("read", "describe_configs", "alter_configs"), "group", group)
    allow(processor, ("write", "describe"), "transactional_id", transactional_id_prefix(topics), "prefixed")

    executor = principals.executor
    allow(executor, ("read",), "topic", ready, "prefixed")
    allow(executor, ("write",), "topic", topics.events)
    allow(executor, ("write",), "topic", topics.heartbeats)
    allow(executor, ("write",), "topic", topics.workers)
    allow(executor, ("write",), "topic", topics.dlq)
    allow(executor, ("read", "describe_configs", "alter_configs"), "group", topics.executor_group)
    return sorted(out)
