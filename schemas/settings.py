"""One settings object for every process, read from ``TASKSTREAM_*`` variables.

Build it once at the edge (CLI, test fixture) and pass it down; nothing deeper
reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TASKSTREAM_", frozen=True, env_parse_none_str="null")

    bootstrap_servers: str = Field(DEFAULT_BOOTSTRAP, description="Kafka bootstrap servers")
    prefix: str = Field("taskstream", pattern=r"^[A-Za-z0-9._-]+$", description="topic name prefix")
    partitions: int = Field(6, ge=1, description="partitions of events, state and ready topics")
    replication_factor: int = Field(1, ge=1)
    embedded_broker: bool = Field(
        False, description="work around the embedded Tansu broker's quirks (BROKER.md); set by `taskstream dev`"
    )
    session_timeout_ms: int = Field(6000, ge=1000, description="consumer group session timeout")
    data_dir: Path = Field(Path(".taskstream"), description="RocksDB files of the processor and read model")
    fetch_wait_max_ms: int = Field(
        10, ge=0, description="how long a fetch may wait for data; the embedded broker holds every fetch this long, "
        "so it bounds each hop of a task through the processor and executors (lower: faster hops, busier idle)"
    )
    cold_fetch_wait_max_ms: int = Field(
        250, ge=0, description="fetch wait of consumers off the hot path (processor heartbeats, retry relay): on the "
        "embedded broker every fetch waits this long, so a longer wait means less idle CPU; a heartbeat or a "
        "retry is seen up to this much later"
    )
    embedded_partitions: int = Field(
        6, ge=1, description="partitions per topic when `taskstream dev` runs the embedded broker and neither "
        "--partitions nor TASKSTREAM_PARTITIONS says otherwise: fewer cost less CPU while idle, but the embedded "
        "broker's cost per fetch grows with the batches a partition holds, so fewer slow down sooner as the log grows"
    )
    producer_linger_ms: float = Field(0.0, ge=0, description="linger.ms of producers: 0 sends at once (batches still form under load)")

    api_host: str = "127.0.0.1"
    api_port: int = 8080
    max_body_bytes: int = Field(1024 * 1024, description="larger request bodies get 413")

    executor_concurrency: int = Field(16, ge=1)
    started_event_after_s: float = Field(
        1.0, ge=0, description="an attempt that runs longer than this reports TaskStarted (short ones report only their result)"
    )
    priority_weights: tuple[int, int, int] = Field(
        (6, 3, 1), description="high:medium:low share of executor slots while every level has a backlog"
    )
    default_max_attempts: int = Field(3, ge=1)
    default_timeout_s: float | None = Field(
        3600.0, gt=0, description="timeout of an attempt whose task sets none (None: no limit)"
    )
    default_backoff_initial_s: float = Field(1.0, ge=0, description="wait before the 2nd attempt")
    default_backoff_multiplier: float = Field(2.0, ge=1, description="each further wait is this many times longer")
    default_backoff_max_s: float = Field(300.0, ge=0, description="longest wait between attempts")
    default_backoff_jitter: float = Field(
        0.1, ge=0, le=1, description="waits are shortened by up to this fraction (deterministic per task and attempt)"
    )
    lease_s: float = Field(
        30.0, gt=0, description="a running attempt with no heartbeat or result for this long is expired and retried"
    )
    heartbeat_interval_s: float = Field(5.0, gt=0, description="how often executors heartbeat running attempts")
    timer_tick_s: float = Field(0.05, gt=0, description="how often the processor looks for due timers")
    misfire_grace_s: float = Field(
        60.0, ge=0, description="cron fires missed by less than this still run, each once; older ones follow the "
        "schedule's misfire policy"
    )
    shutdown_grace_s: float = Field(10.0, ge=0)
    ready_requires_workers: bool = Field(
        False, description="/readyz also waits until the processor and executor groups are stable (`taskstream dev` sets it)"
    )
    ready_max_read_model_lag: int | None = Field(
        1000, ge=0, description="/readyz fails while the API's read model is more than this many records of "
        "<p>.state behind the end offsets (None: only the initial catch-up counts)"
    )
    processor_instance_id: str | None = Field(
        None, description="static group membership (group.instance.id) of a processor: a restarted processor with "
        "the same id takes its partitions back without a full rebalance (measured on the embedded broker: back "
        "7 s after a SIGKILL instead of 12 s, but after several quick SIGKILL-restarts in a row the group "
        "stayed without assignment: use it on Kafka/Redpanda, not on the embedded broker); use the pod name of a "
        "StatefulSet, never one id for two live processors"
    )
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = Field(
        "text", description="text: one readable line a record; json: one JSON object a line (time, level, logger, "
        "message, task_id and attempt when the record is about a task, exc_info)"
    )
    metrics_port: int = Field(
        9100, ge=0, le=65535, description="processors and executors serve Prometheus metrics on "
        "http://metrics_host:metrics_port/metrics (0: off); the API serves them on its own port at /metrics"
    )
    metrics_host: str = Field(
        "127.0.0.1", description="listen address of the metrics port (0.0.0.0 in a container Prometheus scrapes)"
    )

    wire_format: Literal["single-object", "confluent"] = Field(
        "single-object", description="how records are framed: Avro single-object encoding (C3 01 + schema "
        "fingerprint, no registry needed) or the Confluent wire format (00 + 4-byte schema id from "
        "schema_registry_url, which Redpanda Console and Confluent deserializers decode); readers accept both"
    )
    schema_registry_url: Annotated[str | None, BeforeValidator(lambda v: None if v in ("", "null") else v)] = Field(
        None, description="Confluent-compatible schema registry (Redpanda's on :8081); needed to write the "
        "confluent wire format and to read records written in it"
    )
    # --- gRPC and live updates
    grpc_port: int | None = Field(
        None, ge=0, le=65535, description="the API also serves gRPC (taskstream.v1, health, reflection) on "
        "grpc_host:grpc_port; None: off (taskstream dev turns it on at 50051); 0: a free port"
    )
    grpc_host: str = Field("127.0.0.1", description="listen address of the gRPC port (loopback unless clients "
                           "elsewhere must reach it)")
    watch_ring_size: int = Field(
        10_000, ge=1, description="recent task state changes the API keeps in memory for watches to resume from; "
        "a watch resumed from further back reads <p>.state from its cursor instead (slower, still exact)"
    )
    watch_queue_limit: int = Field(
        10_000, ge=1, description="changes that may wait for one slow watcher; past it the watch ends and the "
        "client resumes from its last event id"
    )
    watch_heartbeat_s: float = Field(15.0, gt=0, description="seconds between keep-alive comments of an SSE "
                                     "watch, so proxies keep an idle stream open")

    allow_second_cron: bool = Field(
        False, description="the API accepts cron schedules that fire more than once a minute (six fields, seconds "
        "last, more than one second in it); off, they are a 422 naming cron. Each fire is a task through the "
        "processor: turn it on only where a few such schedules are wanted and the processor has room for them"
    )
