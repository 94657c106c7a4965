"""One settings object for every process, read from ``TASKSTREAM_*`` variables.

Build it once at the edge (CLI, test fixture) and pass it down; nothing deeper
reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .retry import DEFAULT_RETRY, RetryPolicy

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


class Settings(BaseSettings):
    # hide_input_in_errors: a validation error never echoes a value (it may be a password)
    model_config = SettingsConfigDict(env_prefix="TASKSTREAM_", frozen=True, env_parse_none_str="null",
                                      hide_input_in_errors=True)

    bootstrap_servers: str = Field(DEFAULT_BOOTSTRAP, description="Kafka bootstrap servers")
    prefix: str = Field("taskstream", pattern=r"^[A-Za-z0-9._-]+$", description="topic name prefix")
    partitions: int = Field(6, ge=1, description="partitions of events, state and ready topics")
    replication_factor: int = Field(1, ge=1)
    session_timeout_ms: int = Field(
        6000, ge=1000, description="consumer group session timeout: a member that stops heartbeating (a crash) "
        "loses its partitions after this long; lower fails over sooner, higher rides out longer pauses"
    )
    group_protocol: Literal["consumer", "classic"] = Field(
        "classic", description="consumer group protocol: classic (the default; client-side assignment, "
        "cooperative-sticky) or consumer (KIP-848: the broker assigns partitions "
        "incrementally and the session timeout is set on the group; Apache Kafka 4.0+; opt-in: a restarted processor "
        "with a static processor_instance_id is refused until its old member's session ends, see docs/operations.md)"
    )
    min_insync_replicas: int | None = Field(
        None, ge=1, description="min.insync.replicas of the topics taskstream creates (None: the broker's default); "
        "2 with replication_factor 3, so an acknowledged write is on two brokers"
    )
    data_dir: Path = Field(Path(".taskstream"), description="RocksDB files of the processor and read model")
    producer_linger_ms: float = Field(
        0.0, ge=0, description="linger.ms of producers: 0 sends at once (batches still form under load)"
    )
    request_timeout_ms: int = Field(
        5000, ge=1000, description="how long a client waits for a broker's answer before it drops the connection "
        "and asks the others who leads now (socket.timeout.ms, and request.timeout.ms of producers): a broker that "
        "hangs without closing its connections (frozen, partitioned) is failed over after this long"
    )

    api_host: str = "127.0.0.1"
    api_port: int = 8080
    max_body_bytes: int = Field(1024 * 1024, description="larger request bodies get 413")

    executor_concurrency: int = Field(16, ge=1)
    started_event_after_s: float = Field(
        0.1, ge=0,
        description="an attempt that runs longer than this reports TaskStarted, so the API shows it running (short "
        "ones report only their result); 0 reports every start, at a cost in throughput",
    )
    priority_weights: tuple[int, int, int] = Field(
        (6, 3, 1), description="high:medium:low share of executor slots while every level has a backlog"
    )
    default_max_attempts: int = Field(
        DEFAULT_RETRY.max_attempts, description="attempts in all, the first included, of a task whose request names "
        "none (1: no retry)"
    )
    default_timeout_s: float | None = Field(
        3600.0, gt=0, description="timeout of an attempt whose task sets none (None: no limit)"
    )
    default_backoff_initial_s: float = Field(DEFAULT_RETRY.initial_s, description="wait before the 2nd attempt")
    default_backoff_multiplier: float = Field(DEFAULT_RETRY.multiplier,
                                              description="each further wait is this many times longer (1 or more)")
    default_backoff_max_s: float = Field(DEFAULT_RETRY.max_s, description="longest wait between attempts; also the "
                                         "most a handler's Retry(delay_s=...) may ask for")
    default_backoff_jitter: float = Field(
        DEFAULT_RETRY.jitter, description="waits are shortened by up to this fraction, 0 to 1 (deterministic per "
        "task and attempt)"
    )
    lease_s: float = Field(
        30.0, gt=0, description="a running attempt with no heartbeat or result for this long is expired and retried"
    )
    heartbeat_interval_s: float = Field(5.0, gt=0, description="how often executors heartbeat running attempts")
    worker_report_interval_s: float = Field(
        5.0, gt=0, description="how often an executor reports itself to <prefix>.workers (GET /api/v1/workers): "
        "it shows as gone after 3 intervals without a report; shorter finds a dead executor sooner"
    )
    timer_tick_s: float = Field(0.05, gt=0, description="how often the processor looks for due timers")
    misfire_grace_s: float = Field(
        60.0, ge=0, description="cron fires missed by less than this still run, each once; older ones follow the "
        "schedule's misfire policy"
    )
    shutdown_grace_s: float = Field(10.0, ge=0)
    ready_requires_workers: bool = Field(
        False,
        description="/readyz also waits until the processor and executor groups are stable (`taskstream dev` sets it)",
    )
    ready_max_read_model_lag: int | None = Field(
        1000, ge=0, description="/readyz fails while the API's read model is more than this many records of "
        "<p>.state behind the end offsets (None: only the initial catch-up counts)"
    )
    processor_instance_id: str | None = Field(
        None, description="static group membership (group.instance.id) of a processor: a restarted processor with "
        "the same id takes its partitions back without a full rebalance (docs/production.md, \"High availability of "
        "processing\"); use the pod name of a StatefulSet, never one id for two live processors"
    )
    processor_exactly_once: bool = Field(
        False, description="opt-in (docs/concepts.md, \"Delivery guarantees\", says what is missing for the "
        "default): the processor writes state, follow-up events, ready messages and its consumer offsets "
        "in one Kafka transaction, so a processor killed at any point neither loses nor repeats an output "
        "; false (the default): at-least-once folding (a crash may send a follow-up or ready message twice; "
        "readers deduplicate)"
    )
    processor_commit_interval_s: float = Field(
        0.1, ge=0, le=10, description="the processor commits (with exactly once: one transaction) at most this "
        "often; outputs become visible to readers at the commit, so a lower value shortens every dependency hop and "
        "a higher one saves broker writes at low rates (0: after every batch)"
    )
    processor_transaction_timeout_ms: int = Field(
        10_000, ge=1000, le=900_000, description="transaction.timeout.ms of the processor: the broker aborts a "
        "transaction open longer than this. A processor killed mid-transaction holds back read_committed readers "
        "of the partitions it wrote to until then (plus the broker's "
        "transaction.abort.timed.out.transaction.cleanup.interval.ms); lower it for a faster takeover, raise it if "
        "commits under load take that long"
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

    # --- authentication, authorization, rate limits (docs/security.md)
    auth_api_keys: bool = Field(
        False, description="the API accepts API keys (`taskstream keys create`), kept as records of <p>.admin that "
        "every API replica follows"
    )
    auth_api_key_max_staleness_s: float = Field(
        10.0, gt=0, description="API keys are refused (503) while this API has not confirmed for this long that it "
        "read <p>.admin to its end, so a revoked key stops working at most this long after `keys revoke`"
    )
    auth_jwt_public_key: str | None = Field(
        None, description="PEM public key (RSA or EC) that signs accepted JWT bearer tokens; turns JWT on"
    )
    auth_jwt_public_key_file: Path | None = Field(None, description="file holding auth_jwt_public_key (a k8s Secret)")
    auth_jwt_jwks_url: str | None = Field(
        None, description="JWKS URL of the identity provider whose tokens are accepted (keys picked by `kid`); turns "
        "JWT on"
    )
    auth_jwt_issuer: str | None = Field(None, description="required `iss` of accepted tokens (needed when JWT is on)")
    auth_jwt_audience: str | None = Field(None, description="required `aud` of accepted tokens (needed when JWT is on)")
    auth_jwt_algorithms: list[str] = Field(["RS256", "ES256"], description="signature algorithms accepted")
    auth_jwt_roles_claim: str = Field(
        "roles", description="claim holding the token's roles (a list or a space-separated string; dots walk into "
        "nested claims, e.g. realm_access.roles); the highest of reader/submitter/operator/admin counts"
    )
    auth_jwt_leeway_s: float = Field(30.0, ge=0, description="clock skew allowed on exp/nbf/iat")
    auth_allow_unauthenticated: bool = Field(
        False, description="serve the API without authentication on a non-loopback address (off: the API refuses "
        "to start there unless API keys or JWT are on)"
    )
    trusted_hosts: list[str] | None = Field(
        None, description="Host header values the API answers (`*.example.com` works, `*` allows any); default: "
        "the loopback names (localhost, 127.0.0.1, [::1]) when the API listens on loopback, any host otherwise. "
        "Stops DNS-rebinding pages from driving a loopback API"
    )
    metrics_token: str | None = Field(
        None, repr=False,
        description="bearer token /metrics asks for; unset, /metrics is open while the API listens on loopback "
        "and refused otherwise (unless the API runs unauthenticated by auth_allow_unauthenticated)"
    )
    rate_limit_anonymous: tuple[float, int] | None = Field(
        None, description="[tokens per second, burst] per client address when authentication is off (null: no "
        "limit; the API then serves loopback only)"
    )
    rate_limit_reader: tuple[float, int] | None = Field((50.0, 100), description="[per second, burst] per reader")
    rate_limit_submitter: tuple[float, int] | None = Field(
        (200.0, 1000), description="[per second, burst] per submitter; a batch or workflow costs one per task"
    )
    rate_limit_operator: tuple[float, int] | None = Field((200.0, 1000), description="[per second, burst] per operator")
    rate_limit_admin: tuple[float, int] | None = Field((200.0, 1000), description="[per second, burst] per admin")

    # --- Kafka and registry security
    # Applied to every Kafka client through schemas/kafka.py. A secret is given either directly (its variable) or
    # as a file (its ``*_file`` setting, e.g. a mounted Kubernetes Secret; read when a client is made, trailing
    # newline dropped). Secrets are SecretStr: repr, logs and errors show ``**********``.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = Field(
        None, description="security.protocol of every Kafka client (unset: librdkafka's default, PLAINTEXT); "
        "SASL_SSL for a cluster that wants credentials over TLS"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"] | None = Field(
        None, description="sasl.mechanism (Redpanda: SCRAM-SHA-256 or SCRAM-SHA-512)"
    )
    kafka_sasl_username: str | None = Field(None, description="sasl.username")
    kafka_sasl_password: SecretStr | None = Field(None, description="sasl.password")
    kafka_sasl_password_file: Path | None = Field(None, description="file holding sasl.password (instead of it)")
    kafka_ssl_ca_location: Path | None = Field(
        None, description="CA bundle (PEM) that signed the brokers' certificates (unset: the system's CAs)"
    )
    kafka_ssl_certificate_location: Path | None = Field(None, description="client certificate (PEM) for mutual TLS")
    kafka_ssl_key_location: Path | None = Field(None, description="client private key (PEM) for mutual TLS")
    kafka_ssl_key_password: SecretStr | None = Field(None, description="password of the client private key")
    kafka_ssl_key_password_file: Path | None = Field(None, description="file holding the client key's password")
    kafka_config: dict[str, SecretStr] = Field(
        {}, description="more librdkafka properties for every client, JSON object; only ssl.*, sasl.*, "
        "enable.ssl.* and enable.sasl.* keys (e.g. {\"ssl.endpoint.identification.algorithm\": \"none\"} for a "
        "test cluster whose certificates name no host); values are treated as secrets"
    )
    schema_registry_username: str | None = Field(None, description="basic auth user of the schema registry")
    schema_registry_password: SecretStr | None = Field(None, description="basic auth password of the schema registry")
    schema_registry_password_file: Path | None = Field(None, description="file holding schema_registry_password")
    schema_registry_token: SecretStr | None = Field(None, description="bearer token for the schema registry")
    schema_registry_token_file: Path | None = Field(None, description="file holding schema_registry_token")
    schema_registry_ca_location: Path | None = Field(None, description="CA bundle (PEM) of the registry's certificate")

    @model_validator(mode="after")
    def _retry_policy_in_bounds(self) -> Settings:
        problems = self.default_retry.problems()
        if problems:
            raise ValueError("; ".join(f"{'default_' if name == 'max_attempts' else 'default_backoff_'}{name} {message}"
                                       for name, message in problems))
        return self

    @property
    def default_retry(self) -> RetryPolicy:
        """The retry policy of a new task that names none of its fields (the API fills requests from it)."""
        return RetryPolicy(max_attempts=self.default_max_attempts, initial_s=self.default_backoff_initial_s,
                           multiplier=self.default_backoff_multiplier, max_s=self.default_backoff_max_s,
                           jitter=self.default_backoff_jitter)

    @field_validator("kafka_config")
    @classmethod
    def _only_security_properties(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        allowed = ("ssl.", "sasl.", "enable.ssl.", "enable.sasl.")
        bad = sorted(k for k in value if not k.startswith(allowed))
        if bad:
            raise ValueError(
                f"only ssl.*, sasl.*, enable.ssl.* and enable.sasl.* properties may be set here, not {bad}")
        return value

    # --- Built-in http and shell handlers (executors/builtin_http.py, executors/builtin_shell.py)
    http_allowed_hosts: list[str] = Field(
        [], description="hosts the built-in http handler may call, JSON list: exact names, \"*.example.com\" for "
        "its subdomains, or IP literals; empty (the default): the handler refuses every URL"
    )
    http_allowed_networks: list[str] = Field(
        [], description="CIDR ranges the http handler may reach although they are not public (loopback, private, "
        "link-local, ULA, ...), JSON list, e.g. [\"10.20.0.0/16\"] for an internal service; empty: public only"
    )
    http_timeout_s: float = Field(30.0, gt=0, description="longest a whole http request may take (a task's "
                                  "payload may ask for less)")
    http_max_response_bytes: int = Field(128 * 1024, ge=0, le=192 * 1024, description="response body bytes kept "
                                         "in the http handler's result; the rest is not read (truncated: true)")
    http_max_redirects: int = Field(5, ge=0, description="redirects the http handler follows, each hop checked "
                                    "like the first URL (0: none)")
    shell_enabled: bool = Field(False, description="run the built-in shell handler at all; off, it refuses every task")
    shell_allowed_commands: list[str] = Field(
        [], description="commands (argv[0]) the shell handler may run, JSON list of absolute paths or names found on "
        "the scrubbed PATH; argv[0] must equal an entry"
    )
    shell_env: list[str] = Field(
        ["PATH", "LANG", "LC_ALL", "TZ"], description="environment variables a shell command inherits from the "
        "executor; nothing else (no TASKSTREAM_* secrets) reaches it"
    )
    shell_timeout_s: float = Field(60.0, gt=0, description="longest a command may run before its process group "
                                   "is killed (a task's payload may ask for less)")
    shell_max_output_bytes: int = Field(64 * 1024, ge=0, le=96 * 1024, description="bytes of stdout and of stderr "
                                        "kept in the result (the rest is read and dropped)")

    @field_validator("http_allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for n in value:
            try:
                ipaddress.ip_network(n, strict=False)
            except ValueError:
                raise ValueError(f"not a CIDR network: {n!r}") from None
        return value

    def secret(self, name: str) -> str | None:
        """The value of secret setting ``name``: the setting itself, else the content of the file ``<name>_file``
        names (trailing newline dropped); None if neither is set."""
        value: SecretStr | None = getattr(self, name)
        if value is not None:
            return value.get_secret_value()
        path = getattr(self, f"{name}_file", None)
        if path is None:
            return None
        try:
            return Path(path).read_text().rstrip("\r\n")
        except OSError as exc:
            raise ValueError(f"{name}_file: cannot read {path}: {exc.strerror}") from None
