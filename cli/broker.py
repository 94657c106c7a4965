"""Apache Kafka for `taskstream dev` and the tests: KRaft nodes as plain JVM processes on loopback.

The jars are the ones ``kafka/pom.xml`` (package data) pins: fetched once with
Maven from Maven Central into a cache outside the repository (``kafka_home``),
then run as Kafka's own ``bin/`` scripts would: ``kafka.tools.StorageTool
format`` on a new log directory, then ``kafka.Kafka server.properties``. The
node keeps its log in the directory it is given, so a restart on the same
directory loses nothing. It listens on 127.0.0.1 only: PLAINTEXT, or, given a
``ListenerSecurity``, a SASL_SSL client listener (SCRAM-SHA-512 users created
when the directory is formatted, ACLs enforced by KRaft's ``StandardAuthorizer``)
beside the PLAINTEXT controller listener.

Contract: ``KafkaBroker(port, data_dir).start()`` returns once the node
answers a metadata request; ``stop()`` shuts it down cleanly (SIGTERM, then
SIGKILL after a grace period); ``alive()`` tells a supervisor whether to start
it again. ``KafkaCluster(brokers, port, data_dir)`` is several such nodes, each
broker and controller (a combined quorum of every node as voter), on
consecutive ports, with the internal topics replicated and
``min.insync.replicas`` set for that many nodes (``cluster_sizes``); its
``start()`` returns once every node is a broker of the cluster. A missing Java
or Maven is ``BrokerUnavailable`` with what to install.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from taskstream.schemas import BrokerUnavailable, Settings

log = logging.getLogger(__name__)

#: The Java release Kafka 4.x needs.
MIN_JAVA = 17
#: Heap of a dev or test node: ample for a single node's metadata and caches, far below Kafka's 1 GiB default.
HEAP = "384m"
#: Extra JVM options of every node this module starts, split like a shell would. A garbage collector chosen here
#: (``-XX:+Use...GC``) replaces the node's G1. The test suite sets ``-XX:TieredStopAtLevel=1 -XX:+UseSerialGC``:
#: its short-lived nodes spend about half their CPU compiling with C2 (docs/benchmarks/2026-12-07-test-broker-jvm.md).
JVM_OPTIONS_ENV = "TASKSTREAM_KAFKA_JVM_OPTIONS"
#: The least SIGTERM grace of a node that writes its class-data archive at exit: the JVM dumps it after Kafka's own
#: shutdown, which takes far longer than a plain stop on a loaded machine, and a node killed before the dump ends
#: leaves no archive (so every later start would run without one, and ``warm_up`` would start a node again).
ARCHIVE_GRACE_S = 180.0
#: The cluster id of every node this module formats (any 22-character base64 id; one cluster per directory).
CLUSTER_ID = "dGFza3N0cmVhbS1kZXYtMQ"

#: log4j2 configuration: warnings and errors only (Kafka logs every segment roll and rebalance at INFO).
LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.target = SYSTEM_ERR
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = OUT
logger.state.name = state.change.logger
logger.state.level = ERROR
"""


#: ``LOW-HIGH``: the ports ``free_port`` draws from (the test suite gives each pytest-xdist worker a slice of its own).
FREE_PORTS_ENV = "TASKSTREAM_FREE_PORTS"
#: The lowest port ``free_port`` draws by default; the highest is just below the kernel's ephemeral range.
FREE_PORTS_FLOOR = 15000


def _free_port_range() -> tuple[int, int] | None:
    """``[low, high)`` of the ports ``free_port`` draws from, or None to let the kernel choose."""
    wanted = os.environ.get(FREE_PORTS_ENV, "")
    if wanted:
        low, _, high = wanted.partition("-")
        return int(low), int(high) + 1
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return (FREE_PORTS_FLOOR, ephemeral_low) if ephemeral_low - FREE_PORTS_FLOOR >= 1000 else None


def free_port() -> int:
    """A loopback port nothing is bound to now, for a server about to start (a node, an API, a gRPC server).

    Drawn at random below the kernel's ephemeral range (``$TASKSTREAM_FREE_PORTS``, ``LOW-HIGH``, to choose the
    range): a port the kernel picked for ``bind(0)`` is one it also hands to outgoing connections, and a Kafka
    client opens many, so a port chosen that way was sometimes taken by a connection before its server bound it.
    """
    span = _free_port_range()
    if span is not None:
        low, high = span
        start = random.randrange(low, high)
        for i in range(high - low):
            port = low + (start - low + i) % (high - low)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Linux: the broker gets SIGTERM when the process that started it dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def pom_text() -> str:
    return resources.files("taskstream.cli").joinpath("kafka/pom.xml").read_text()


def kafka_version() -> str:
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom_text())
    return match.group(1) if match else "unknown"


def kafka_home() -> Path:
    """Where the jars live: ``$TASKSTREAM_KAFKA_HOME``, else ``$XDG_CACHE_HOME/taskstream`` (``~/.cache``) under a
    name made of the Kafka version and a hash of the pom, so a changed pom fetches again."""
    if os.environ.get("TASKSTREAM_KAFKA_HOME"):
        return Path(os.environ["TASKSTREAM_KAFKA_HOME"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(pom_text().encode()).hexdigest()[:10]
    return cache / "taskstream" / f"kafka-{kafka_version()}-{digest}"


def java_command() -> str:
    """The ``java`` to run: ``$JAVA_HOME/bin/java`` or the one on PATH, checked to be Java 17 or later."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home and (Path(home) / "bin" / "java").exists() else shutil.which("java")
    if java is None:
        raise BrokerUnavailable(
            f"Java {MIN_JAVA}+ is needed to run Kafka and none was found: install a JDK or JRE "
            f"(Debian/Ubuntu: apt-get install openjdk-{MIN_JAVA}-jre-headless; `make dev` does it), or point "
            "TASKSTREAM_BOOTSTRAP_SERVERS at a running Kafka or Redpanda")
    major = java_version(java)[0]
    if major < MIN_JAVA:
        raise BrokerUnavailable(f"Kafka needs Java {MIN_JAVA}+, and {java} is Java {major or '?'}: install "
                                f"openjdk-{MIN_JAVA}-jre-headless or set JAVA_HOME")
    return java


@functools.lru_cache(maxsize=8)
def java_version(java: str) -> tuple[int, str]:
    """(major release, full version string) of ``java`` as ``java -version`` prints it; (0, "") if unreadable."""
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "((\d+)(?:\.(\d+))?[^"]*)"', out)
    if not match:
        return 0, ""
    major = int(match.group(2))
    if major == 1 and match.group(3):  # "1.8.0" is Java 8
        major = int(match.group(3))
    return major, match.group(1)


def class_data_archive(java: str) -> Path:
    """Where the node's class-data sharing archive lives (one per Java build, beside the jars): written when a
    node without one exits, read by every later start (about 2 s less of a 5 s start on 2 cores)."""
    version = re.sub(r"[^A-Za-z0-9._-]", "_", java_version(java)[1]) or "unknown"
    return kafka_home() / f"kafka-java-{version}.jsa"


def ensure_jars(say: Callable[[str], object] = log.info) -> Path:
    """The directory of Kafka's jars, fetched with Maven (``mvn dependency:copy-dependencies``) on first use."""
    home = kafka_home()
    libs = home / "libs"
    if (home / ".complete").exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerUnavailable(
            f"Kafka's jars are not in {home} yet and Maven is needed to fetch them: install it (Debian/Ubuntu: "
            "apt-get install maven; `make dev` does it), or point TASKSTREAM_BOOTSTRAP_SERVERS at a running Kafka")
    home.mkdir(parents=True, exist_ok=True)
    pom = home / "pom.xml"
    pom.write_text(pom_text())
    staging = home / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    say(f"fetching Apache Kafka {kafka_version()} from Maven Central into {home} (once) ...")
    result = subprocess.run(
        [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies", f"-DoutputDirectory={staging}",
         "-DincludeScope=runtime"], capture_output=True, text=True)
    if result.returncode != 0:
        raise BrokerUnavailable(f"could not fetch Kafka's jars with Maven (exit {result.returncode}): "
                                f"{(result.stdout + result.stderr).strip()[-2000:]}")
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    (home / ".complete").write_text(kafka_version())
    return libs


def warm_up(say=log.info) -> Path:
    """Jars fetched (``ensure_jars``) and the class-data archive written, by starting and stopping a throwaway
    node once if there is none yet, so that the first real start is as quick as later ones. The jars' directory."""
    libs = ensure_jars(say)
    if not class_data_archive(java_command()).exists():
        import tempfile

        say("starting Kafka once to write its class-data archive (quicker starts) ...")
        with tempfile.TemporaryDirectory(prefix="taskstream-kafka-warm-") as tmp:
            KafkaBroker(free_port(), tmp).start(say=say).stop()
    return libs


def cluster_sizes(brokers: int) -> tuple[int, int]:
    """(replication factor, ``min.insync.replicas``) of topics on a cluster of ``brokers`` nodes: three replicas
    and two in sync from three nodes on (one node may die and every acknowledged write is still on two), else
    every node a replica and one in sync (a write needs only the leader)."""
    replicas = min(3, brokers)
    return replicas, 2 if replicas >= 3 else 1


def server_properties(port: int, controller_port: int, log_dir: Path, node_id: int = 1, *,
                      voters: str | None = None, brokers: int = 1) -> str:
    """A KRaft node (broker and controller) on 127.0.0.1; alone by default, else one of ``brokers`` nodes whose
    controller quorum is ``voters`` (``id@host:port,...``), with the internal topics and the topics' default
    replication sized for the cluster (``cluster_sizes``)."""
    replicas, min_isr = cluster_sizes(brokers)
    return "\n".join([
        "process.roles=broker,controller",
        f"node.id={node_id}",
        f"controller.quorum.voters={voters or f'{node_id}@127.0.0.1:{controller_port}'}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        f"log.dirs={log_dir}",
        f"offsets.topic.replication.factor={replicas}",
        "offsets.topic.num.partitions=6",
        f"transaction.state.log.replication.factor={replicas}",
        f"transaction.state.log.min.isr={min_isr}",
        "transaction.state.log.num.partitions=6",
        # a crashed processor's open transaction is aborted within a second of its timeout, not ten
        "transaction.abort.timed.out.transaction.cleanup.interval.ms=1000",
        f"share.coordinator.state.topic.replication.factor={replicas}",
        f"share.coordinator.state.topic.min.isr={min_isr}",
        f"default.replication.factor={replicas}",
        f"min.insync.replicas={min_isr}",
        "unclean.leader.election.enable=false",
        # after a crash the node must wait out its own old registration before it serves again (9 s by default)
        "broker.session.timeout.ms=3000",
        "broker.heartbeat.interval.ms=1000",
        "group.initial.rebalance.delay.ms=0",  # a dev node: no 3 s wait before every first group join
        "group.min.session.timeout.ms=1000",  # tests run groups with a 2 s session timeout
        # the consumer group protocol (KIP-848): the client's group config sets its session timeout and heartbeat
        # interval (schemas/kafka.py); these bounds let it go as low as the classic protocol's
        "group.consumer.min.session.timeout.ms=1000",
        "group.consumer.min.heartbeat.interval.ms=250",
        "auto.create.topics.enable=false",  # a typo in a topic name is an error, not a new topic
        "",
    ])


@dataclass(frozen=True, slots=True)
class ListenerSecurity:
    """A SASL_SSL client listener in place of the PLAINTEXT one (docs/security.md, "Kafka with TLS, SCRAM and
    ACLs").

    ``keystore`` is a PEM file holding the node's private key (PKCS#8, unencrypted) and its certificate chain (the
    certificate must name 127.0.0.1: clients check the host); ``truststore`` the PEM of the CA that signed it.
    ``users`` maps SCRAM-SHA-512 user names to passwords, written into the cluster's metadata when the log
    directory is formatted (``StorageTool format --add-scram``), so they exist from the first start; ``admin``
    (one of them) is the super user and the node's own identity on its listener. Every other principal is
    allowed only what an ACL grants (``allow.everyone.if.no.acl.found=false``). The controller listener stays
    PLAINTEXT on 127.0.0.1; its anonymous principal (the node talking to its own controller) is a super user too.
    """

    keystore: Path
    truststore: Path
    users: Mapping[str, str]
    admin: str = "admin"

    def properties(self, port: int, controller_port: int) -> str:
        """Lines that, appended to ``server_properties``, replace its PLAINTEXT listener (the last value wins)."""
        if self.admin not in self.users:
            raise ValueError(f"the admin user {self.admin!r} needs a password in users")
        login = ("org.apache.kafka.common.security.scram.ScramLoginModule required "
                 f'username="{self.admin}" password="{self.users[self.admin]}";')
        return "\n".join([
            f"listeners=SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=SASL_SSL://127.0.0.1:{port}",
            "inter.broker.listener.name=SASL_SSL",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
            "sasl.enabled.mechanisms=SCRAM-SHA-512",
            "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
            f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={login}",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={Path(self.keystore).resolve()}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={Path(self.truststore).resolve()}",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            f"super.users=User:{self.admin};User:ANONYMOUS",
            "allow.everyone.if.no.acl.found=false",
            "",
        ])

    def format_args(self) -> list[str]:
        """``StorageTool format`` arguments that create the SCRAM users."""
        return [arg for name, password in self.users.items()
                for arg in ("--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]")]

    def client_settings(self, user: str | None = None) -> dict[str, object]:
        """``Settings`` fields of a client of this listener as ``user`` (default: the admin)."""
        user = user or self.admin
        return {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "SCRAM-SHA-512",
                "kafka_sasl_username": user, "kafka_sasl_password": self.users[user],
                "kafka_ssl_ca_location": Path(self.truststore).resolve()}


class KafkaBroker:
    """One KRaft Kafka node on 127.0.0.1:``port`` keeping its log in ``data_dir``; start()/stop() or ``with``."""

    def __init__(self, port: int, data_dir: str | Path, *, controller_port: int | None = None,
                 heap: str = HEAP, node_id: int = 1, voters: str | None = None, brokers: int = 1,
                 security: ListenerSecurity | None = None) -> None:
        self.port = port
        self.security = security
        self.data_dir = Path(data_dir)
        self.controller_port = controller_port or free_port()
        self.heap = heap
        #: This node's id, the controller quorum it belongs to (None: itself alone) and the cluster's size.
        self.node_id = node_id
        self.voters = voters
        self.brokers = brokers
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._archive_tmp: tuple[Path, Path] | None = None  # (written at exit, where it goes)

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "log"

    @property
    def output(self) -> Path:
        """The node's own log lines (warnings and errors)."""
        return self.data_dir / "broker.log"

    def _prepare(self, java: str, libs: Path) -> list[str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        properties = server_properties(self.port, self.controller_port, self.log_dir.resolve(), self.node_id,
                                       voters=self.voters, brokers=self.brokers)
        if self.security is not None:
            properties += self.security.properties(self.port, self.controller_port)
        (self.data_dir / "server.properties").write_text(properties)
        (self.data_dir / "server.properties").chmod(0o600)  # with security: the admin's password
        (self.data_dir / "log4j2.properties").write_text(LOG4J2)
        archive = class_data_archive(java)
        if archive.exists():
            sharing = [f"-XX:SharedArchiveFile={archive}", "-Xlog:cds=off", "-Xlog:cds+dynamic=off"]
        else:  # written at exit under a name of this process's own, renamed into place by stop()
            self._archive_tmp = (archive.parent / f"{archive.name}.{os.getpid()}-{self.port}.tmp", archive)
            sharing = [f"-XX:ArchiveClassesAtExit={self._archive_tmp[0]}"]
        extra = shlex.split(os.environ.get(JVM_OPTIONS_ENV, ""))
        collector = ([] if any(o.startswith("-XX:+Use") and o.endswith("GC") for o in extra)
                     else ["-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20"])
        base = [java, f"-Xms{self.heap}", f"-Xmx{self.heap}", *collector, *extra, *sharing,
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={(self.data_dir / 'log4j2.properties').resolve()}",
                "-cp", f"{libs}/*"]
        if not (self.log_dir / "meta.properties").exists():
            result = subprocess.run(
                [*(a for a in base if not a.startswith("-XX:ArchiveClassesAtExit")), "kafka.tools.StorageTool",
                 "format", "-t", CLUSTER_ID, "-c", str(self.data_dir / "server.properties"), "--ignore-formatted",
                 *(self.security.format_args() if self.security is not None else [])],
                capture_output=True, text=True)
            if result.returncode != 0:
                raise BrokerUnavailable(f"could not format Kafka's log directory {self.log_dir}: "
                                        f"{(result.stdout + result.stderr).strip()[-1500:]}")
        return [*base, "kafka.Kafka", str(self.data_dir / "server.properties")]

    def start(self, timeout: float = 60.0, say: Callable[[str], object] = log.info) -> KafkaBroker:
        self.launch(say)
        self.wait_ready(timeout)
        return self

    def launch(self, say: Callable[[str], object] = log.info) -> None:
        """Start the node's process without waiting for it (a node of a cluster waits for its quorum)."""
        java = java_command()
        libs = ensure_jars(say)
        cmd = self._prepare(java, libs)
        with open(self.output, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                         start_new_session=True, preexec_fn=_die_with_parent)

    def wait_ready(self, timeout: float) -> None:
        """Until the node answers a metadata request naming itself as a broker (and, in a cluster, naming every
        node); raise if it exits or times out."""
        from taskstream.schemas.kafka import admin
        from taskstream.schemas.log_reader import broker_count

        deadline = time.monotonic() + timeout
        client = admin(self.client_settings(), "taskstream-broker-start")
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise BrokerUnavailable(f"Kafka exited with {self.proc.returncode if self.proc else '?'} (port "
                                        f"{self.port} or {self.controller_port} in use?): {self.tail()}")
            try:
                if broker_count(client, 1) >= self.brokers:
                    return
            except BrokerUnavailable:  # not listening yet
                time.sleep(0.1)
        self.stop()
        raise BrokerUnavailable(f"Kafka did not answer on {self.bootstrap_servers} within {timeout:.0f}s: "
                                f"{self.tail()}")

    def client_settings(self, user: str | None = None, **fields: object) -> Settings:
        """``Settings`` of a client of this node (as ``user`` of its ``security``, default its admin), with
        ``fields``."""
        secured = self.security.client_settings(user) if self.security is not None else {}
        return Settings(bootstrap_servers=self.bootstrap_servers, **{**secured, **fields})  # type: ignore[arg-type]

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.output.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the node's process if it runs (SIGSTOP/SIGCONT in fault tests)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:  # alive()
            proc.kill()
            proc.wait()

    def stop(self, timeout: float = 20.0) -> None:
        """Controlled shutdown (SIGTERM), SIGKILL after ``timeout`` seconds (``ARCHIVE_GRACE_S`` at least for a
        node that writes the class-data archive at exit)."""
        if self.terminate():
            self.wait_stopped(timeout)

    def terminate(self) -> bool:
        """SIGTERM (the start of a controlled shutdown) without waiting; whether the node was running."""
        if not self.alive():
            return False
        self.signal(signal.SIGTERM)
        return True

    def wait_stopped(self, timeout: float) -> None:
        """Wait for a terminated node to exit, SIGKILL after ``timeout`` seconds (``ARCHIVE_GRACE_S`` at least for
        a node that writes the class-data archive at exit)."""
        proc = self.proc
        if proc is None:
            return
        if self._archive_tmp is not None:
            timeout = max(timeout, ARCHIVE_GRACE_S)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self._keep_archive()

    def _keep_archive(self) -> None:
        """Move the class-data archive this node wrote at exit into place (atomically; the first one wins)."""
        if self._archive_tmp is None:
            return
        (tmp, target), self._archive_tmp = self._archive_tmp, None
        if not tmp.exists():
            return
        if self.proc is not None and self.proc.returncode in (0, 143) and not target.exists():
            tmp.rename(target)
        else:
            tmp.unlink(missing_ok=True)

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class KafkaCluster:
    """``brokers`` KRaft nodes on 127.0.0.1, each a broker and a controller: node ``i`` (1, 2, ...) serves clients
    on ``port + i - 1`` and its controller on ``controller_ports[i - 1]`` (by default the ``brokers`` ports after
    the client ports), keeping its log in ``data_dir/node-i``. The quorum is every node (3 voters survive one
    dead node; 2 do not). Topics get ``cluster_sizes(brokers)``. ``nodes`` are ``KafkaBroker``s: a supervisor or a
    test restarts, kills or stops one by itself."""

    def __init__(self, brokers: int, port: int, data_dir: str | Path, *, ports: list[int] | None = None,
                 controller_ports: list[int] | None = None, heap: str = HEAP) -> None:
        if brokers < 1:
            raise ValueError("a cluster needs at least one node")
        ports = ports or [port + i for i in range(brokers)]  # tests pass free ports of their own
        controller_ports = controller_ports or [port + brokers + i for i in range(brokers)]
        voters = ",".join(f"{i + 1}@127.0.0.1:{cport}" for i, cport in enumerate(controller_ports))
        self.data_dir = Path(data_dir)
        self.nodes = [KafkaBroker(ports[i], self.data_dir / f"node-{i + 1}", controller_port=controller_ports[i],
                                  heap=heap, node_id=i + 1, voters=voters, brokers=brokers)
                      for i in range(brokers)]

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(n.bootstrap_servers for n in self.nodes)

    def start(self, timeout: float = 90.0, say: Callable[[str], object] = log.info) -> KafkaCluster:
        """Start every node at once (a controller waits for a quorum of its peers), then wait until each answers
        with every node a broker; stop them all and raise ``BrokerUnavailable`` if one does not."""
        try:
            for node in self.nodes:
                node.launch(say)
            deadline = time.monotonic() + timeout
            for node in self.nodes:
                node.wait_ready(max(1.0, deadline - time.monotonic()))
        except BrokerUnavailable:
            self.stop()
            raise
        return self

    def node(self, node_id: int) -> KafkaBroker:
        return self.nodes[node_id - 1]

    def alive(self) -> bool:
        return all(n.alive() for n in self.nodes)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to every node at once (one by one, the last would wait for a quorum that is gone), then wait for
        each; SIGKILL after ``timeout``."""
        running = [n for n in self.nodes if n.terminate()]
        deadline = time.monotonic() + timeout
        for n in running:
            n.wait_stopped(max(0.1, deadline - time.monotonic()))

    def __enter__(self) -> KafkaCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
