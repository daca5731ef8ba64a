"""Observability end to end: the fleet's real workers, scraped live and by a real Prometheus.

Every consumer of the Procfile runs with its production flags (its own topics, a free metrics
port and a temporary healthcheck file instead of the fixed ones) and gets traffic including
bad input; so does the gateway (`web`): an accepted upload, a wrong token, a bad part. Then:

- every metric name the alert/recording rules and the Grafana dashboard read is one the
  workers really export (`/metrics` scraped), and what they export follows Prometheus naming;
- the liveness probe command of the Deployments passes against a running worker;
- a Prometheus server (Debian package) scrapes the workers every second with
  deploy/prometheus/workers.rules.yml loaded as it is: per-step series and the recording
  rules move with new traffic, and `WorkersDeadLetterMessages` fires for every worker. That
  alert has no `for:` (a DLQ message is worth a look at once), so the production rules file
  is used unchanged; alerts with a `for:` are covered by promtool's unit tests instead.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from harness.gateway import GatewayProcess, multipart_body
from harness.kafka import make_topics, unique_name
from harness.waiting import wait_for
from harness.worker_process import WorkerProcess
from tests.deploy.promql import EXTERNAL_METRICS, RULES, exported_names_used
from tests.deploy.support import gateway_process, is_consumer_command, procfile
from tests.support.deploy_tools import ensure_prometheus
from tests.support.observability_traffic import SETUPS, Consumer, Message
from workers.common.net import free_port
from workers.common.projects import create_organization
from workers.common.settings import Settings
from workers.fleet import build_registry
from workers.gateway.tokens import create_token

pytestmark = pytest.mark.integration

# Options `WorkerProcess` sets itself or this test replaces.
REPLACED_OPTIONS = ("--metrics-port", "--healthcheck-file", "--host", "--port")
UNIT_SUFFIXES = ("_seconds", "_bytes", "_messages")


def production_args(argv: list[str]) -> list[str]:
    """`workers run NAME ...` / `workers serve gateway ...` from the Procfile, without the
    options this test replaces."""
    args = argv[3:]
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in REPLACED_OPTIONS:
            skip = True
        else:
            kept.append(arg)
    return kept


def send(settings: Settings, topic: str, messages: list[Message]) -> None:
    producer = Producer({**settings.kafka_client_config(), "message.max.bytes": 16 * 2**20})
    for key, value, headers in messages:
        wire: list[tuple[str, str | bytes | None]] = list(headers)
        producer.produce(topic, value=value, key=key, headers=wire)
        producer.poll(0)
    assert producer.flush(30) == 0


def families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def total(text: str, family: str, **labels: str) -> float:
    found = families(text).get(family)
    if found is None:
        return 0.0
    return sum(
        float(sample.value)
        for sample in found.samples
        if sample.name.endswith("_total")
        and all(sample.labels.get(key) == value for key, value in labels.items())
    )


def scraped_names(text: str) -> set[str]:
    """Series names a scrape offers (families without samples included, from `# TYPE`)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        elif line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Consumer]]:
    settings = Settings.from_env()
    tmp = tmp_path_factory.mktemp("observability")
    registry = build_registry()
    consumers: list[Consumer] = []
    for name, argv in procfile().items():
        if not is_consumer_command(argv):
            continue
        assert name in SETUPS, f"add traffic for the new consumer {name} to SETUPS"
        definition = registry.get(name)
        consumer = Consumer(name, unique_name(name), tmp / f"{name}.healthcheck", lambda _: [])
        assert definition.dlq_topic is not None
        make_topics(settings, consumer.topic, definition.dlq_topic, partitions=2)
        SETUPS[name](settings, consumer, tmp)
        consumer.process = WorkerProcess(
            name,
            *production_args(argv),
            "--healthcheck-file", str(consumer.healthcheck_file),
            "--topic", consumer.topic, "--consumer-group", consumer.topic,
            *consumer.extra,
            log_name=f"observability-{consumer.topic}",
        )  # fmt: skip
        consumers.append(consumer)
    try:
        for consumer in consumers:
            send(settings, consumer.topic, consumer.traffic(1))
        for consumer in consumers:
            wait_for(
                lambda c=consumer: (  # type: ignore[misc]
                    total(c.worker.scrape_or_none() or "", "workers_dlq_messages") > 0
                    and total(c.worker.scrape_or_none() or "", "workers_step_messages_in") > 0
                ),
                90,
                f"{consumer.name} to process its traffic and dead-letter the bad input",
                interval=0.2,
            )
        yield consumers
    finally:
        for consumer in consumers:
            assert consumer.worker.stop() == 0


@dataclass
class Gateway:
    process: GatewayProcess
    organization: str
    token: str

    def traffic(self) -> None:
        """An accepted upload (200), a wrong token (401) and a part without filename (400)."""
        url = f"{self.process.url}/api/0/organizations/{self.organization}/chunk-upload/"
        data = f"observability upload {uuid.uuid4()}".encode()
        for token, parts, status in (
            (self.token, [("file", hashlib.sha1(data).hexdigest(), data)], 200),
            ("wrong", [("file", "x", data)], 401),
            (self.token, [("file", None, data)], 400),
        ):
            body, content_type = multipart_body(parts)
            request = urllib.request.Request(
                url,
                data=body,
                method="POST",
                headers={"Content-Type": content_type, "Authorization": f"Bearer {token}"},
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    answered = response.status
            except urllib.error.HTTPError as error:
                answered = error.code
            assert answered == status, (parts[0][1], answered)


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    _, argv = gateway_process()
    settings = Settings.from_env()
    topic = unique_name("observability-chunks")
    make_topics(settings, topic)
    slug = f"obs-gw-{uuid.uuid4().hex[:10]}"
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        create_organization(connection, slug, None)
        token = create_token(connection, slug, ["project:releases"]).token
    process = GatewayProcess(
        *production_args(argv), "--topic", topic, log_name=f"observability-{topic}"
    )
    try:
        served = Gateway(process, slug, token)
        served.traffic()
        yield served
    finally:
        assert process.stop() == 0


def test_rules_and_dashboard_read_only_metrics_the_workers_export(
    fleet: list[Consumer], gateway: Gateway
) -> None:
    exported = scraped_names(gateway.process.scrape())
    for consumer in fleet:
        exported |= scraped_names(consumer.worker.scrape())
    used = exported_names_used()
    assert used, "nothing used"
    assert sorted(used - exported) == [], "read by rules/dashboard but exported by no worker"
    assert not EXTERNAL_METRICS.keys() & exported


def test_exported_metrics_follow_prometheus_naming(fleet: list[Consumer], gateway: Gateway) -> None:
    scrapes: list[tuple[str | None, str]] = [
        (consumer.name, consumer.worker.scrape()) for consumer in fleet
    ]
    # The gateway is not a registry worker: its series carry no `worker` label.
    scrapes.append((None, gateway.process.scrape()))
    for worker, text in scrapes:
        for family in text_string_to_metric_families(text):
            if not family.name.startswith("workers_"):
                continue
            names = {sample.name for sample in family.samples}
            if family.type == "counter":
                assert all(n.endswith(("_total", "_created")) for n in names), family.name
            elif family.type == "histogram":
                assert family.name.endswith(UNIT_SUFFIXES), family.name
            else:
                assert not family.name.endswith("_total"), family.name
            for sample in family.samples:
                assert sample.labels.get("worker") == worker, sample


def test_liveness_probe_command_passes_while_the_loop_runs(fleet: list[Consumer]) -> None:
    for consumer in fleet:
        path = consumer.healthcheck_file
        wait_for(path.exists, 30, f"{consumer.name} to touch {path}")
        probe = subprocess.run(
            [sys.executable, "-m", "arroyo.healthcheck", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert probe.returncode == 0, probe.stderr
        # The probe consumed the file; the running loop touches it again.
        wait_for(path.exists, 30, f"{consumer.name} to touch {path} again")


class PrometheusServer:
    def __init__(self, binary: Path, directory: Path, targets: list[str]) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": "workers", "static_configs": [{"targets": targets}]},
            ],
        }
        config_file = directory / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        self.log = directory / "prometheus.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    str(binary),
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=directory,
            )

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        url = f"http://127.0.0.1:{self.port}{path}{query}"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read()
        return json.loads(body) if path.startswith("/api/") else body

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log.read_text()[-2000:]}")
        try:
            self.get("/-/ready")
        except OSError:
            return False
        return True

    def query(self, promql: str) -> list[dict[str, Any]]:
        answer = self.get("/api/v1/query", query=promql)
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def firing(self, alertname: str) -> list[dict[str, str]]:
        alerts = self.get("/api/v1/alerts")["data"]["alerts"]
        return [
            a["labels"]
            for a in alerts
            if a["labels"]["alertname"] == alertname and a["state"] == "firing"
        ]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


@pytest.fixture
def prometheus(
    fleet: list[Consumer], gateway: Gateway, tmp_path: Path
) -> Iterator[PrometheusServer]:
    _, binary = ensure_prometheus(print)
    targets = [f"127.0.0.1:{consumer.worker.metrics_port}" for consumer in fleet]
    targets.append(f"127.0.0.1:{gateway.process.metrics_port}")
    server = PrometheusServer(binary, tmp_path, targets)
    try:
        wait_for(server.ready, 60, "Prometheus to be ready")
        yield server
    finally:
        server.stop()


def test_prometheus_scrapes_the_fleet_evaluates_the_rules_and_fires_the_dlq_alert(
    fleet: list[Consumer], gateway: Gateway, prometheus: PrometheusServer
) -> None:
    workers = {consumer.name for consumer in fleet}

    def targets_up() -> bool:
        up = prometheus.query('up{job="workers"}')
        return len(up) == len(fleet) + 1 and all(r["value"][1] == "1" for r in up)

    wait_for(targets_up, 30, "Prometheus to scrape every worker and the gateway")
    # New traffic while Prometheus watches: the counters must move between its scrapes.
    settings = Settings.from_env()
    for consumer in fleet:
        send(settings, consumer.topic, consumer.traffic(2))
    gateway.traffic()

    def gateway_moved() -> set[str] | None:
        statuses = {
            r["metric"]["status"]
            for r in prometheus.query(
                "sum by (status) (increase(workers_gateway_requests_total[1m])) > 0"
            )
        }
        return statuses if {"200", "400", "401"} <= statuses else None

    wait_for(gateway_moved, 60, "the gateway's request counters to increase per status")

    def moved(promql: str) -> set[str] | None:
        found = {r["metric"]["worker"] for r in prometheus.query(promql)}
        return found if found == workers else None

    wait_for(
        lambda: moved("sum by (worker) (increase(workers_step_messages_in_total[1m])) > 0"),
        60,
        "every worker's step counters to increase",
    )
    wait_for(
        lambda: moved("sum by (worker) (increase(workers_step_messages_invalid_total[1m])) > 0"),
        60,
        "every worker's invalid-message counters to increase",
    )
    # The recording rules evaluate over the live series.
    wait_for(
        lambda: moved("worker_step:workers_step_error_ratio:rate5m > 0"),
        60,
        "the error-ratio recording rule",
    )
    # Some steps sample their latency (billing's decode: one message in 256), so any worker.
    wait_for(
        lambda: prometheus.query("worker_step:workers_step_latency_seconds:p99_5m > 0"),
        60,
        "the latency recording rule",
    )

    def dlq_alerts() -> list[dict[str, str]] | None:
        alerts = prometheus.firing("WorkersDeadLetterMessages")
        return alerts if {a["worker"] for a in alerts} == workers else None

    firing = wait_for(dlq_alerts, 60, "WorkersDeadLetterMessages to fire for every worker")
    assert all(a["severity"] == "warning" and a["reason"] for a in firing)


def test_the_series_the_stall_alert_watches_are_live(fleet: list[Consumer]) -> None:
    """WorkersConsumerStalled reads lag and committed offset per partition of the input topic.

    It cannot use `arroyo_consumer_commit_status_total`: with the fleet's synchronous commits
    that counter stays at zero, which this test also pins down.
    """
    for consumer in fleet:

        def committed(c: Consumer = consumer) -> dict[str, float] | None:
            offsets = families(c.worker.scrape())["workers_consumer_committed_offset"]
            found = {s.labels["partition"]: s.value for s in offsets.samples}
            assert {s.labels["topic"] for s in offsets.samples} <= {c.topic}
            return found if sum(found.values()) > 0 else None

        offsets = wait_for(committed, 30, f"{consumer.name} to report committed offsets")
        text = consumer.worker.scrape()
        lag = families(text)["workers_consumer_lag_messages"]
        assert {s.labels["topic"] for s in lag.samples} == {consumer.topic}
        assert {s.labels["partition"] for s in lag.samples} == set(offsets)
        assert total(text, "arroyo_consumer_commit_status") == 0
