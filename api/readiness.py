"""Readiness: whether this API process can serve, and why not; asked by ``/readyz`` and the gRPC health service.

Ready means: the broker answers a metadata request within ``probe.TIMEOUT_S``
(1 s), every topic of ``catalogue(settings)`` exists, the read model finished
its initial catch-up of ``<p>.state`` (see ``read_model.ReadModel``) and is
not more than ``settings.ready_max_read_model_lag`` records behind the end
offsets of ``<p>.state``. With ``ready_requires_workers`` (set by
`taskstream dev`) the processor and executor consumer groups must also be
stable, so a client that waits for readiness finds the whole system warm.
With API keys on, the key store must have confirmed recently that it read
``<p>.admin`` to its end (``api.keys``). The producer must be able to
write: not ready while it waits to replace a client that hit a fatal
error (``kafka.RecoveringProducer.problem``). Broker answers come from the
context's ``probe.BrokerProbe`` and are reused for ``probe.CACHE_S`` (1 s):
a probe storm or a down broker costs the broker (and the probe) at most one
request each per second.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from taskstream.schemas import BrokerUnavailable, Topics, catalogue

from .context import ApiContext


@dataclass(frozen=True, slots=True)
class Readiness:
    """Each check's verdict (``"ok"`` or why not), the reasons for not being ready (none: ready), and figures
    measured on the way (``read_model_lag``)."""

    checks: dict[str, str]
    reasons: list[str]
    measured: dict[str, Any] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return not self.reasons


async def check(ctx: ApiContext) -> Readiness:
    """Run every check (broker calls in threads, cached by the probe)."""
    settings = ctx.settings
    checks = {"broker": "ok", "topics": "ok", "read_model": "ok"}
    reasons = []
    extra = {}
    broker = ctx.probe
    try:
        existing = await asyncio.to_thread(broker.topic_partitions)
    except BrokerUnavailable as exc:
        checks["broker"] = checks["topics"] = "unknown"
        reasons.append(f"broker unreachable at {settings.bootstrap_servers}: {exc}")
    else:
        missing = [t.name for t in catalogue(settings) if t.name not in existing]
        if missing:
            checks["topics"] = "missing"
            reasons.append(f"topics missing: {', '.join(missing)}")
    if settings.ready_requires_workers and checks["broker"] == "ok":
        topics = Topics(settings.prefix)
        try:
            groups = await asyncio.to_thread(broker.groups)
        except BrokerUnavailable:
            groups = {}
        for name, group in (("processor", topics.processor_group), ("executors", topics.executor_group)):
            checks[name] = (groups.get(group) or {}).get("state", "unknown")
            if checks[name] != "stable":
                reasons.append(f"consumer group {group} is {checks[name]}")
    read_model = ctx.read_model
    if not read_model.caught_up:
        checks["read_model"] = "catching up"
        reasons.append(f"read model not caught up: {read_model.problem or 'catching up'}")
    elif settings.ready_max_read_model_lag is not None and checks["topics"] == "ok":
        lag = extra["read_model_lag"] = await asyncio.to_thread(_read_model_lag, broker, read_model)
        if lag is None:
            checks["read_model"] = "unknown"
            reasons.append("read model lag unknown: the broker did not report the end offsets of the state topic")
        elif lag > settings.ready_max_read_model_lag:
            checks["read_model"] = "behind"
            reasons.append(f"read model is {lag} records behind {read_model.topic} "
                           f"(more than ready_max_read_model_lag={settings.ready_max_read_model_lag})")
    problem = ctx.producer.problem
    checks["producer"] = "ok" if problem is None else "failed"
    if problem is not None:
        reasons.append(f"the API cannot write to the event log: producer {problem}")
    keys = ctx.authenticator.keys  # API keys on: a replica that cannot check them is not ready (auth.py)
    if keys is not None:
        checks["api_keys"] = "ok" if keys.fresh else "stale"
        if not keys.fresh:
            reasons.append(f"API keys cannot be checked: {keys.topic} not read to its end recently "
                           f"({keys.problem or 'catching up'})")
    return Readiness(checks, reasons, extra)


def _read_model_lag(broker, read_model) -> int | None:
    """The read model's lag (``BrokerProbe.read_model_lag``), None when the broker does not answer."""
    try:
        return broker.read_model_lag(read_model)
    except BrokerUnavailable:
        return None


__all__ = ["Readiness", "check"]
