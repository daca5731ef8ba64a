"""One Apache Kafka 4.x node of the stack (KRaft, broker and controller in one JVM).

The stack runs one node, or three forming a cluster (`workers.stack.kafka_layout`); each
node is a `KafkaService` of its own, so `workers stack up | status | down` start, report
and stop every broker like any other service.
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Sequence
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from workers.common.settings import Settings
from workers.stack.commands import run_command
from workers.stack.errors import StackError
from workers.stack.kafka_layout import KafkaLayout, KafkaNode, parse_bootstrap, server_properties
from workers.stack.kafka_runtime import classpath, ensure_jars, find_java
from workers.stack.lifecycle import spawn_detached, terminate
from workers.stack.logs import start_log, tail
from workers.stack.pids import find_own_pid, pid_alive, remove_file, write_pid
from workers.stack.ports import port_open
from workers.stack.procfs import process_cmdline
from workers.stack.service import LOCALHOST, Echo

log = logging.getLogger(__name__)
# librdkafka's own log lines (connection refused while the broker boots, …) go here.
_client_log = logging.getLogger(f"{__name__}.client")

# After an unclean stop (kill -9, a crash) Kafka recovers every partition's log before it
# answers: a minute or more with the many topics a test run leaves, on a busy machine.
READY_TIMEOUT = 180.0
# A cluster node answers only once the quorum has a leader, and the first is launched while
# the others are still formatted; each also recovers its logs after an unclean stop.
CLUSTER_READY_TIMEOUT = 240.0
STOP_TIMEOUT = 30.0


def new_cluster_id() -> str:
    """A Kafka cluster id: a random UUID, URL-safe base64 without padding."""
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not candidate.startswith("-"):  # Kafka avoids ids that look like CLI flags.
            return candidate


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
    """One node of the stack's Kafka: `kafka` alone, or `kafka-N` (node id N) of a cluster.

    A node answers for its own address, and only once the cluster's metadata lists it (it
    registered with the controller quorum). An external Kafka is one `kafka` service that
    only health-checks `KAFKA_BOOTSTRAP_SERVERS`.
    """

    component = "kafka"
    url_variable = "KAFKA_BOOTSTRAP_SERVERS"

    def __init__(self, settings: Settings, layout: KafkaLayout, node: KafkaNode) -> None:
        self._settings = settings
        self._layout = layout
        self.node = node
        self.name = node.name
        self.log_file = node.log_file
        self.ready_timeout = READY_TIMEOUT if layout.brokers == 1 else CLUSTER_READY_TIMEOUT
        if self.component in settings.external_services:
            self._bootstrap = settings.kafka_bootstrap_servers
            self._listed_node: int | None = None
        else:
            self._bootstrap = node.address
            self._listed_node = node.node_id
        self._servers = parse_bootstrap(self._bootstrap)
        self._java: str | None = None

    @property
    def url(self) -> str:
        return self._bootstrap

    @property
    def ports(self) -> Sequence[int]:
        return (self.node.port, self.node.controller_port)

    # --- health ---

    def probe(self) -> str | None:
        return self._probe(timeout=10.0)

    def _probe(self, timeout: float) -> str | None:
        # A quick TCP check first: librdkafka would spend the whole timeout retrying.
        if not any(port_open(host, port, timeout=2.0) for host, port in self._servers):
            return f"nothing listens on {self._bootstrap}"
        config: dict[str, str | int | float | bool] = {
            **self._settings.kafka_client_config(),
            "bootstrap.servers": self._bootstrap,
        }
        try:
            admin = AdminClient(config, logger=_client_log)
            metadata = admin.list_topics(timeout=timeout)
        except KafkaException as error:
            return f"metadata request failed: {error.args[0] if error.args else error}"
        if not metadata.brokers:
            return "metadata has no brokers"
        if self._listed_node is not None and self._listed_node not in metadata.brokers:
            return f"node {self._listed_node} is not registered with the controller quorum yet"
        return None

    # --- ownership ---

    def _is_ours(self, pid: int) -> bool:
        command = process_cmdline(pid)
        return "kafka.Kafka" in command and str(self.node.config) in command

    def own_pid(self) -> int | None:
        return find_own_pid(self.node.pid_file, self.node.port, self._is_ours, self.name)

    # --- start ---

    def prepare(self, echo: Echo) -> None:
        self._java = find_java()
        self.node.directory.mkdir(parents=True, exist_ok=True)
        ensure_jars(self._layout.libs, echo)
        write_if_changed(
            self.node.config,
            server_properties(self._layout, self.node, partitions=self._settings.topic_partitions),
        )
        self._ensure_formatted(echo)

    def _cluster_id(self) -> str:
        path = self._layout.cluster_id_file
        try:
            existing = path.read_text().strip()
        except FileNotFoundError:
            existing = ""
        if existing:
            return existing
        cluster_id = new_cluster_id()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_if_changed(path, cluster_id + "\n")
        return cluster_id

    def _ensure_formatted(self, echo: Echo) -> None:
        if (self.node.data / "meta.properties").exists():
            return
        assert self._java is not None
        echo(f"{self.name}: formatting KRaft storage in {self.node.data}")
        # A static quorum (`controller.quorum.voters`) is formatted without `--standalone`;
        # every node of a cluster is formatted with the same cluster id.
        run_command(
            [
                self._java,
                "-cp",
                classpath(self._layout.libs),
                "kafka.tools.StorageTool",
                "format",
                "-t",
                self._cluster_id(),
                "-c",
                str(self.node.config),
                "--ignore-formatted",
            ],
            what="formatting Kafka's storage (kafka.tools.StorageTool format)",
            timeout=120,
            cwd=self.node.directory,
        )

    def launch(self) -> None:
        assert self._java is not None, "prepare() first"
        start_log(self.log_file, self.name)
        argv = [
            self._java,
            *self._layout.jvm_options,
            "-cp",
            classpath(self._layout.libs),
            "kafka.Kafka",
            str(self.node.config),
        ]
        pid = spawn_detached(argv, log_path=self.log_file, cwd=self.node.directory)
        write_pid(self.node.pid_file, pid)
        log.info("started %s as pid %d, logging to %s", self.name, pid, self.log_file)

    def poll_ready(self) -> str | None:
        pid = self.own_pid()
        if pid is None or not pid_alive(pid):
            raise StackError(
                f"{self.name} exited while starting; "
                f"the last lines of {self.log_file}:\n{tail(self.log_file)}"
            )
        if not port_open(LOCALHOST, self.node.port):
            return f"nothing listens on {self.node.address} yet"
        return self._probe(timeout=5.0)

    # --- stop ---

    def stop(self) -> bool:
        pid = self.own_pid()
        if pid is None:
            return False
        terminate(pid, name=self.name, timeout=STOP_TIMEOUT)
        remove_file(self.node.pid_file)
        return True
