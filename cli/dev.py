"""`taskstream dev`: the whole system on this machine, supervised.

Starts Apache Kafka as a single KRaft node on 127.0.0.1 (``cli.broker``;
unless ``TASKSTREAM_BOOTSTRAP_SERVERS`` is set), or with ``--brokers N`` a
cluster of N nodes on consecutive ports (topics replicated as
``cluster_sizes`` says: 3 replicas, 2 in sync, from three nodes on), creates
the topics, then runs processors, executors and APIs (one of each by
default, N executors) as child processes, each with the same settings
passed through the environment; a second processor or API gets a data
directory of its own, and the APIs listen on consecutive HTTP and gRPC ports. Everything lives in one
data directory (``--data-dir``, default ``./.taskstream``): the broker's log
under ``kafka/``, the processor's tables and the API's read model beside it,
so a second ``taskstream dev`` on the same directory finds every task,
history, schedule and dead letter again; ``--fresh`` deletes it first. A child
that dies is restarted, the broker too (on the same directory). Ctrl-C or
SIGTERM stops the children (SIGTERM, then SIGKILL after a grace period) and
the broker, so nothing is left behind.

Metrics: each API serves ``/metrics`` on its port; the processors and the
executors serve theirs on consecutive ports from ``TASKSTREAM_METRICS_PORT``
(default 9100: the first processor), all on ``TASKSTREAM_METRICS_HOST``
(127.0.0.1); 0 turns them off.
`dev` prints the addresses once the system is ready.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pydantic import SecretStr

from taskstream.schemas import BrokerUnavailable, Settings, TopicMismatch, catalogue
from taskstream.schemas.kafka import ensure_topics, wait_for_broker

from .broker import KafkaBroker, KafkaCluster, cluster_sizes, free_port

STOP_GRACE_S = 8.0
#: A child that exits this many times in a row, each within CRASH_LOOP_S of
#: its start, is not restarted again: `dev` stops with an error instead.
CRASH_LOOP_EXITS = 3
CRASH_LOOP_S = 10.0


def settings_env(settings: Settings) -> dict[str, str]:
    """``TASKSTREAM_*`` variables that rebuild ``settings`` in a child process."""
    env = {}
    dumped = settings.model_dump(mode="json")
    for name in dumped:  # secrets dump as "**********": a child needs the values themselves
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            dumped[name] = value.get_secret_value()
        elif isinstance(value, dict) and any(isinstance(v, SecretStr) for v in value.values()):
            dumped[name] = {k: v.get_secret_value() if isinstance(v, SecretStr) else v for k, v in value.items()}
    for name, value in dumped.items():
        env[f"TASKSTREAM_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


def metrics_addresses(settings: Settings, children: list[Child]) -> dict[str, str]:
    """Give each processor/executor child its own metrics port; where every component serves its metrics.

    The processor gets ``settings.metrics_port``, the next child that port + 1
    and so on (the setting 0 keeps them all off); the API serves ``/metrics``
    on its own port.
    """
    out = {}
    port = settings.metrics_port
    for child in children:
        if child.name == "trigger-runner":  # serves no metrics of its own
            continue
        if child.name.startswith("api"):
            out[child.name] = f"http://127.0.0.1:{child.env.get('TASKSTREAM_API_PORT', settings.api_port)}/metrics"
            continue
        child.env = {**child.env, "TASKSTREAM_METRICS_PORT": str(port)}
        if port:
            out[child.name] = f"http://{settings.metrics_host}:{port}/metrics"
            port += 1
    return out


class Child:
    """One supervised component: a `taskstream <command>` subprocess."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.quick_exits = 0
        self.started_at = 0.0

    def start(self) -> None:
        cmd = [sys.executable, "-m", "taskstream.cli.main", *self.args]
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(cmd, env={**os.environ, **self.env}, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit code once the process ended; None while it runs or before it started."""
        return None if self.proc is None else self.proc.returncode

    def terminate(self) -> None:
        if self.proc is not None and self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)

    def kill(self) -> None:
        if self.proc is not None and self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)


def auth_hint(settings: Settings) -> str:
    """One line on how the dev API authenticates and how to turn API keys on (docs/security.md)."""
    keys = f"TASKSTREAM_BOOTSTRAP_SERVERS={settings.bootstrap_servers} TASKSTREAM_PREFIX={settings.prefix} " \
           "taskstream keys create --role admin --name me"
    if settings.auth_api_keys:
        return f"auth: API keys required; create one with: {keys}"
    return ("auth: off, so the API answers only on this machine's loopback; to require API keys, start with "
            f"TASKSTREAM_AUTH_API_KEYS=true taskstream dev, then: {keys}")


def _say(msg: str) -> None:
    print(f"[taskstream dev] {msg}", file=sys.stderr, flush=True)


def _wait_http(url: str, timeout: float, children: list[Child]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        if any(not c.alive() for c in children):
            return False
        time.sleep(0.2)
    return False


# --- gRPC and live updates
#: Where `taskstream dev` serves gRPC unless TASKSTREAM_GRPC_PORT says otherwise (or the port is taken).
DEV_GRPC_PORT = 50051


def dev_grpc_port(base: Settings) -> int:
    """``TASKSTREAM_GRPC_PORT`` if set, else 50051 if free, else a free port (several dev stacks on one machine)."""
    if base.grpc_port is not None:
        return base.grpc_port
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", DEV_GRPC_PORT))
        except OSError:
            return free_port()
    return DEV_GRPC_PORT



class _SignalFlag:
    """Set from a signal handler. (A ``threading.Event`` is not safe there: its ``set`` takes the lock that
    ``wait`` holds in the main thread the handler interrupts, and ``taskstream dev`` then ignored SIGINT/SIGTERM.)"""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._set and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return self._set

def run_dev(
    *,
    api_port: int | None,
    broker_port: int,
    executors: int,
    handlers: list[str],
    concurrency: int | None,
    partitions: int | None,
    data_dir: str | None,
    fresh: bool = False,
    brokers: int = 1,
    processors: int = 1,
    apis: int = 1,
) -> int:
    try:  # a typo in --handlers should fail here, clearly, not in a restart loop
        from taskstream.executors import HandlerImportError, load_handler_modules

        load_handler_modules(handlers)
    except HandlerImportError as exc:
        _say(f"error: {exc}")
        return 2
    stop = _SignalFlag()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    base = Settings()
    own_broker = "TASKSTREAM_BOOTSTRAP_SERVERS" not in os.environ
    broker: KafkaBroker | KafkaCluster | None = None
    data = Path(data_dir) if data_dir is not None else base.data_dir
    if fresh and data.exists():
        _say(f"--fresh: deleting {data.resolve()} (the broker's log, the processor's tables, the read model)")
        shutil.rmtree(data)
    data.mkdir(parents=True, exist_ok=True)
    api_port = base.api_port if api_port is None else api_port
    overrides = {"api_port": api_port, "data_dir": data.resolve(), "ready_requires_workers": True}
    overrides["grpc_port"] = dev_grpc_port(base)  # gRPC and live updates
    if partitions is not None:
        overrides["partitions"] = partitions
    if own_broker:
        if brokers > 1:
            broker = KafkaCluster(brokers, broker_port, data / "kafka-cluster")
            replicas, min_isr = cluster_sizes(brokers)
            overrides.update(replication_factor=replicas, min_insync_replicas=min_isr)
        else:
            broker = KafkaBroker(broker_port, data / "kafka")
        nodes = _nodes(broker)
        _drop_tables_without_log(data, nodes[0])
        known = (nodes[0].log_dir / "meta.properties").exists()
        where = (f"127.0.0.1:{broker_port}" if len(nodes) == 1 else
                 f"127.0.0.1:{broker_port}-{broker_port + brokers - 1} ({brokers} nodes, controllers on "
                 f"{nodes[0].controller_port}-{nodes[-1].controller_port}; replication factor "
                 f"{overrides['replication_factor']}, min.insync.replicas {overrides['min_insync_replicas']})")
        _say(f"starting Apache Kafka on {where} ({'resuming the' if known else 'a new'} log in "
             f"{(nodes[0].log_dir if len(nodes) == 1 else broker.data_dir).resolve()}) ...")
        try:
            broker.start(say=_say)
        except BrokerUnavailable as exc:
            _say(f"error: {exc}")
            return 1
        overrides.update(bootstrap_servers=broker.bootstrap_servers)
    settings = base.model_copy(update=overrides)
    children: list[Child] = []
    try:
        _say(f"waiting for the broker at {settings.bootstrap_servers} ...")
        wait_for_broker(settings, timeout=30)
        _say(f"creating topics (prefix {settings.prefix!r}, {settings.partitions} partitions) ...")
        problems = ensure_topics(settings, catalogue(settings))
        if problems:
            raise TopicMismatch(problems)
        env = settings_env(settings)
        executor_args = ["executor", *[a for h in handlers for a in ("--handlers", h)]]
        if concurrency:
            executor_args += ["--concurrency", str(concurrency)]
        children = [
            *replicas_of("processor", ["processor"], env, processors, data),
            *(Child(f"executor-{i + 1}", executor_args, env) for i in range(executors)),
            Child("trigger-runner", ["trigger-runner"], env),
            *replicas_of("api", ["api"], env, apis, data, api_port=api_port, grpc_port=settings.grpc_port),
        ]
        metrics = metrics_addresses(settings, children)
        for c in children:
            c.start()
        _say("waiting for the API to be ready (processor, executors and read model joining) ...")
        api_ports = [api_port + i for i in range(apis)]
        if not all(_wait_http(f"http://127.0.0.1:{port}/readyz", 120, children) for port in api_ports):
            if not stop.is_set():
                dead = [c.name for c in children if not c.alive()]
                _say(f"error: the system did not become ready (exited: {', '.join(dead) or 'none'})")
                return 1
        else:
            apis_at = ", ".join(f"http://127.0.0.1:{port}" for port in api_ports)
            grpc_at = ", ".join(f"{settings.grpc_host}:{settings.grpc_port + i}" for i in range(apis)) \
                if settings.grpc_port else "off"
            _say(f"ready: API on {apis_at}, gRPC on {grpc_at} (Ctrl-C stops everything)")
            _say("metrics: " + ", ".join(f"{name} {url}" for name, url in metrics.items()))
            _say(f"data: {data.resolve()} (kept across restarts; `taskstream dev --fresh` starts from an empty log)")
            _say(auth_hint(settings))
        while not stop.wait(0.5):
            for node in _nodes(broker):
                if not node.alive() and not stop.is_set() and not _restart_broker(node):
                    return 1
            for c in children:
                if not c.alive():
                    c.restarts += 1
                    c.quick_exits = c.quick_exits + 1 if time.monotonic() - c.started_at < CRASH_LOOP_S else 0
                    if c.quick_exits >= CRASH_LOOP_EXITS:
                        _say(f"error: {c.name} keeps exiting ({c.returncode}) right after start; giving up")
                        return 1
                    _say(f"{c.name} exited with {c.returncode}; restarting (restart {c.restarts})")
                    c.start()
        return 0
    except BrokerUnavailable as exc:
        _say(f"error: {exc}")
        return 1
    finally:
        _shutdown(children)
        if broker is not None:
            broker.stop()
        _say("stopped")


def replicas_of(name: str, args: list[str], env: dict[str, str], n: int, data: Path, *,
                api_port: int | None = None, grpc_port: int | None = None) -> list[Child]:
    """``n`` children running ``args``: one is named ``name``, several ``name-1``, ``name-2`` ... The first keeps
    the settings' data directory, each other one gets ``data/name-i`` (a processor's tables and an API's read model
    are its own); with ``api_port`` (and ``grpc_port``) child ``i`` listens on that port + i - 1."""
    out = []
    for i in range(1, n + 1):
        own = dict(env)
        if i > 1:
            own["TASKSTREAM_DATA_DIR"] = str((data / f"{name}-{i}").resolve())
        if api_port is not None:
            own["TASKSTREAM_API_PORT"] = str(api_port + i - 1)
        if grpc_port:
            own["TASKSTREAM_GRPC_PORT"] = str(grpc_port + i - 1)
        out.append(Child(name if n == 1 else f"{name}-{i}", args, own))
    return out


def _nodes(broker: KafkaBroker | KafkaCluster | None) -> list[KafkaBroker]:
    if broker is None:
        return []
    return broker.nodes if isinstance(broker, KafkaCluster) else [broker]


def _drop_tables_without_log(data: Path, broker: KafkaBroker) -> None:
    """Tables and a read model without the broker log they were folded from (a new log, or a data directory of a
    taskstream whose broker kept its log in memory) describe tasks that no log holds: they go, so that the
    processor and the API start as empty as the log."""
    if (broker.log_dir / "meta.properties").exists():
        return
    folded = [data / "processor", data / "read-model", *data.glob("processor-*"), *data.glob("api-*")]
    for path in folded:
        if path.exists():
            _say(f"the broker's log is new: deleting {path.resolve()}, folded from a log that is gone")
            shutil.rmtree(path)


def _restart_broker(broker: KafkaBroker) -> bool:
    """Start a broker (a node of the cluster) that died again on its own directory; False if it keeps dying at
    once."""
    broker.restarts += 1
    code = broker.proc.returncode if broker.proc is not None else None  # started before it could exit
    node = f" node {broker.node_id}" if broker.brokers > 1 else ""
    _say(f"Kafka{node} exited with {code}; restarting it on the same log (restart {broker.restarts})")
    for attempt in range(CRASH_LOOP_EXITS):
        try:
            broker.start()
            _say("Kafka is back")
            return True
        except BrokerUnavailable as exc:
            _say(f"Kafka did not come back (try {attempt + 1} of {CRASH_LOOP_EXITS}): {exc}")
    _say("error: Kafka keeps failing to start; giving up")
    return False


def _shutdown(children: list[Child]) -> None:
    if not children:
        return
    _say("stopping ...")
    for c in children:
        c.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and any(c.alive() for c in children):
        time.sleep(0.05)
    for c in children:
        if c.alive():
            _say(f"{c.name} did not stop within {STOP_GRACE_S:.0f}s; killing it")
            c.kill()
    for c in children:
        if c.proc is not None:
            c.proc.wait()
