"""A single-node Apache Kafka 4.x (KRaft, broker and controller in one JVM) from Maven jars."""

from __future__ import annotations

import base64
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from workers.common.settings import DEFAULT_KAFKA_CONTROLLER_PORT, Settings
from workers.stack.apt import apt_install
from workers.stack.commands import run_command
from workers.stack.errors import StackError
from workers.stack.lifecycle import spawn_detached, terminate
from workers.stack.logs import start_log, tail
from workers.stack.paths import StackPaths
from workers.stack.pids import find_own_pid, pid_alive, remove_file, write_pid
from workers.stack.ports import port_open
from workers.stack.procfs import process_cmdline
from workers.stack.service import LOCALHOST, Echo

log = logging.getLogger(__name__)
# librdkafka's own log lines (connection refused while the broker boots, …) go here.
_client_log = logging.getLogger(f"{__name__}.client")

KAFKA_VERSION = "4.1.1"
SCALA_VERSION = "2.13"
SLF4J_VERSION = "2.0.17"
MINIMUM_JAVA = 17
JAVA_PACKAGE = "openjdk-17-jre-headless"
# Chunks are up to 8 MiB; leave room for headers and batch overhead.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
READY_TIMEOUT = 60.0
GROUP_FAILURE_DETECTION = {
    "group.consumer.session.timeout.ms": "6000",
    "group.consumer.min.session.timeout.ms": "3000",
    "group.consumer.heartbeat.interval.ms": "500",
    "group.consumer.min.heartbeat.interval.ms": "250",
    # How often the broker looks for transactions past their timeout (default 10 s): the
    # pending offsets of a killed transactional member block its partitions until then.
    "transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000",
}
STOP_TIMEOUT = 30.0
JVM_OPTIONS = (
    "-Xms256m",
    "-Xmx1g",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
    "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSSXXX",
)

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0
                             https://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.workers.stack</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{scala}</artifactId>
      <version>{kafka}</version>
    </dependency>
    <!-- Pinned: the Kafka POM brings slf4j-api 1.7, which does not see a 2.x binding. -->
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-api</artifactId>
      <version>{slf4j}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-simple</artifactId>
      <version>{slf4j}</version>
    </dependency>
  </dependencies>
</project>
"""


def parse_bootstrap(servers: str) -> list[tuple[str, int]]:
    """The `(host, port)` pairs of a bootstrap list (`[v6]:port` allowed)."""
    parsed: list[tuple[str, int]] = []
    for entry in servers.split(","):
        address = entry.strip()
        if not address:
            continue
        address = address.rpartition("://")[2]
        host, separator, port = address.rpartition(":")
        if not separator or not port.isdigit():
            raise StackError(f"KAFKA_BOOTSTRAP_SERVERS: expected host:port, got {entry.strip()!r}")
        parsed.append((host.strip("[]") or LOCALHOST, int(port)))
    if not parsed:
        raise StackError("KAFKA_BOOTSTRAP_SERVERS is empty")
    return parsed


def new_cluster_id() -> str:
    """A Kafka cluster id: a random UUID, URL-safe base64 without padding."""
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not candidate.startswith("-"):  # Kafka avoids ids that look like CLI flags.
            return candidate


def find_java() -> str:
    """A `java` of version 17 or newer, or a `StackError` naming the package to install."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not candidate or not Path(candidate).exists():
        raise StackError(
            f"Kafka needs Java {MINIMUM_JAVA} or newer and no `java` was found; "
            f"install it with: apt-get install -y {JAVA_PACKAGE}"
        )
    output = run_command([candidate, "-version"], what="java -version", timeout=60)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', output)
    if match is None:
        raise StackError(f"cannot tell the version of {candidate} from: {output.strip()!r}")
    major = int(match[1])
    if major == 1 and match[2]:  # "1.8.0_392" is Java 8.
        major = int(match[2])
    if major < MINIMUM_JAVA:
        raise StackError(
            f"Kafka {KAFKA_VERSION} needs Java {MINIMUM_JAVA} or newer, {candidate} is Java "
            f"{major}; install it with: apt-get install -y {JAVA_PACKAGE}"
        )
    return candidate


def server_properties(*, port: int, controller_port: int, data_dir: Path, partitions: int) -> str:
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{LOCALHOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{LOCALHOST}:{port},CONTROLLER://{LOCALHOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{LOCALHOST}:{port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": str(partitions),
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "group.initial.rebalance.delay.ms": "0",
        # Consumer group protocol (KIP-848) failure detection: a member that stops
        # heartbeating (kill -9, a lost node) loses its partitions after 6 s instead of 45 s,
        # and survivors hear of new assignments within one heartbeat (docs/rebalancing.md).
        **GROUP_FAILURE_DETECTION,
        "message.max.bytes": str(MAX_MESSAGE_BYTES),
        "replica.fetch.max.bytes": str(MAX_MESSAGE_BYTES),
    }
    lines = ["# Written by `workers stack up`; edits are overwritten on the next run."]
    lines += [f"{key}={value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def write_if_changed(path: Path, text: str) -> None:
    try:
        if path.read_text() == text:
            return
    except FileNotFoundError:
        pass
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


class KafkaService:
    name = "kafka"
    url_variable = "KAFKA_BOOTSTRAP_SERVERS"
    ready_timeout = READY_TIMEOUT

    def __init__(self, settings: Settings, paths: StackPaths) -> None:
        self._settings = settings
        self._servers = parse_bootstrap(settings.kafka_bootstrap_servers)
        self._host, self._port = self._servers[0]
        self._controller_port = DEFAULT_KAFKA_CONTROLLER_PORT
        self._dir = paths.kafka
        self._libs = self._dir / "libs"
        self._data = self._dir / "data"
        self._config = self._dir / "server.properties"
        self._cluster_id_file = self._dir / "cluster.id"
        self._pid_file = paths.pid_file(self.name)
        self.log_file = paths.log_file(self.name)
        self._java: str | None = None

    @property
    def url(self) -> str:
        return self._settings.kafka_bootstrap_servers

    @property
    def ports(self) -> Sequence[int]:
        return (self._port, self._controller_port)

    # --- health ---

    def probe(self) -> str | None:
        return self._probe(timeout=10.0)

    def _probe(self, timeout: float) -> str | None:
        # A quick TCP check first: librdkafka would spend the whole timeout retrying.
        if not any(port_open(host, port, timeout=2.0) for host, port in self._servers):
            return f"nothing listens on {self._settings.kafka_bootstrap_servers}"
        config: dict[str, str | int | float | bool] = dict(self._settings.kafka_client_config())
        try:
            admin = AdminClient(config, logger=_client_log)
            metadata = admin.list_topics(timeout=timeout)
        except KafkaException as error:
            return f"metadata request failed: {error.args[0] if error.args else error}"
        if not metadata.brokers:
            return "metadata has no brokers"
        return None

    # --- ownership ---

    def _is_ours(self, pid: int) -> bool:
        command = process_cmdline(pid)
        return "kafka.Kafka" in command and str(self._config) in command

    def own_pid(self) -> int | None:
        return find_own_pid(self._pid_file, self._port, self._is_ours, "Kafka")

    # --- start ---

    def prepare(self, echo: Echo) -> None:
        self._java = find_java()
        self._dir.mkdir(parents=True, exist_ok=True)
        self._ensure_jars(echo)
        write_if_changed(
            self._config,
            server_properties(
                port=self._port,
                controller_port=self._controller_port,
                data_dir=self._data,
                partitions=self._settings.topic_partitions,
            ),
        )
        self._ensure_formatted(echo)

    def _classpath(self) -> str:
        return str(self._libs / "*")

    def _ensure_jars(self, echo: Echo) -> None:
        marker = self._libs / ".resolved"
        wanted = f"org.apache.kafka:kafka_{SCALA_VERSION}:{KAFKA_VERSION} slf4j:{SLF4J_VERSION}\n"
        try:
            if marker.read_text() == wanted:
                return
        except FileNotFoundError:
            pass
        mvn = shutil.which("mvn")
        if mvn is None:
            apt_install(["maven"], needed_for="downloading Kafka's jars", echo=echo)
            mvn = shutil.which("mvn")
            if mvn is None:
                raise StackError("the Debian package maven is installed but `mvn` is not on PATH")
        echo(f"kafka: downloading Kafka {KAFKA_VERSION} jars from Maven Central (first run only)")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=".resolve-", dir=self._dir) as scratch:
            pom = Path(scratch) / "pom.xml"
            pom.write_text(
                _POM.format(scala=SCALA_VERSION, kafka=KAFKA_VERSION, slf4j=SLF4J_VERSION)
            )
            output = Path(scratch) / "libs"
            run_command(
                [
                    mvn,
                    "-B",
                    "-q",
                    "-f",
                    str(pom),
                    "dependency:copy-dependencies",
                    f"-DoutputDirectory={output}",
                    "-DincludeScope=runtime",
                ],
                what="resolving Kafka's jars with Maven",
                timeout=1800,
                cwd=Path(scratch),
            )
            jars = sorted(jar.name for jar in output.glob("*.jar"))
            if f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar" not in jars:
                raise StackError(
                    f"Maven finished but kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar is missing"
                )
            stale_api = [
                jar for jar in jars if jar.startswith("slf4j-api-") and SLF4J_VERSION not in jar
            ]
            if stale_api:
                raise StackError(f"Maven resolved a second slf4j-api: {', '.join(stale_api)}")
            (output / ".resolved").write_text(wanted)
            if self._libs.exists():
                shutil.rmtree(self._libs)
            output.rename(self._libs)
        log.info("resolved %d jars in %.1f s", len(jars), time.monotonic() - started)

    def _cluster_id(self) -> str:
        try:
            existing = self._cluster_id_file.read_text().strip()
        except FileNotFoundError:
            existing = ""
        if existing:
            return existing
        cluster_id = new_cluster_id()
        write_if_changed(self._cluster_id_file, cluster_id + "\n")
        return cluster_id

    def _ensure_formatted(self, echo: Echo) -> None:
        if (self._data / "meta.properties").exists():
            return
        assert self._java is not None
        echo(f"kafka: formatting KRaft storage in {self._data}")
        # A static quorum (`controller.quorum.voters`) is formatted without `--standalone`.
        run_command(
            [
                self._java,
                "-cp",
                self._classpath(),
                "kafka.tools.StorageTool",
                "format",
                "-t",
                self._cluster_id(),
                "-c",
                str(self._config),
                "--ignore-formatted",
            ],
            what="formatting Kafka's storage (kafka.tools.StorageTool format)",
            timeout=120,
            cwd=self._dir,
        )

    def launch(self) -> None:
        assert self._java is not None, "prepare() first"
        start_log(self.log_file, self.name)
        argv = [
            self._java,
            *JVM_OPTIONS,
            "-cp",
            self._classpath(),
            "kafka.Kafka",
            str(self._config),
        ]
        pid = spawn_detached(argv, log_path=self.log_file, cwd=self._dir)
        write_pid(self._pid_file, pid)
        log.info("started Kafka as pid %d, logging to %s", pid, self.log_file)

    def poll_ready(self) -> str | None:
        pid = self.own_pid()
        if pid is None or not pid_alive(pid):
            raise StackError(
                "Kafka exited while starting; "
                f"the last lines of {self.log_file}:\n{tail(self.log_file)}"
            )
        if not port_open(self._host, self._port):
            return f"nothing listens on {self._host}:{self._port} yet"
        return self._probe(timeout=5.0)

    # --- stop ---

    def stop(self) -> bool:
        pid = self.own_pid()
        if pid is None:
            return False
        terminate(pid, name="Kafka", timeout=STOP_TIMEOUT)
        remove_file(self._pid_file)
        return True
