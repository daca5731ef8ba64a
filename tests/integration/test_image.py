"""The worker image, built here and run as the pods run it (docs/deploying.md, The image,
built here).

The module's fixture does what `./dev.sh image` does (harness/image): it installs buildah,
podman, runc and mmdebstrap when missing, makes the base image and the wheelhouse when
missing, and builds the Dockerfile when the tree changed since the last build: seconds when
nothing changed, half a minute to a minute when `workers/` did, two to three minutes from
nothing. The containers then run with the pods' security context: user 10001, a read-only
root filesystem with only a tmpfs at /tmp writable, no capabilities; with the host's
network, so they reach the local stack on 127.0.0.1.
"""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from harness.billing import usage_bucket
from harness.image.build import BuiltImage, build_image
from harness.image.run import hardened_run_argv, image_user, stack_env
from harness.image.tools import container_env
from harness.kafka import make_topics, unique_name
from tests.deploy.support import KUBERNETES, procfile
from tests.support.billing import PARTITIONS, decoded
from tests.support.billing_fakes import expected_outcome
from tests.support.kafka import produce, read_all, read_available, wait_until_committed
from workers.billing.counting import SPANS_USAGE_METRIC_ID, TRANSACTIONS_USAGE_METRIC_ID
from workers.billing.definition import DLQ_TOPIC
from workers.common.net import free_port
from workers.common.settings import Settings
from workers.fleet import build_registry

pytestmark = [pytest.mark.integration, pytest.mark.image, pytest.mark.timeout(900)]

ROOT: Final = Path(__file__).resolve().parents[2]
ORG: Final = 17
# Each line is checked: who runs, whether the root filesystem and /tmp take writes.
PROBE: Final = """
import os
print("user", f"{os.getuid()}:{os.getgid()}")
for directory in ("/opt/venv", "/etc", "/tmp"):
    try:
        with open(os.path.join(directory, "probe"), "w") as file:
            file.write("x")
        print(directory, "writable")
    except OSError as error:
        print(directory, error.strerror)
"""


@pytest.fixture(scope="module")
def image() -> BuiltImage:
    return build_image(print)


def podman(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=container_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def billing_liveness_command() -> list[str]:
    """The liveness probe of the billing Deployment (deploy/kubernetes/base/billing.yaml)."""
    for document in yaml.safe_load_all((KUBERNETES / "base" / "billing.yaml").read_text()):
        if document["kind"] == "Deployment":
            container: dict[str, Any] = document["spec"]["template"]["spec"]["containers"][0]
            command: list[str] = container["livenessProbe"]["exec"]["command"]
            return command
    raise AssertionError("no billing Deployment")


def test_workers_run_list_in_the_image(image: BuiltImage) -> None:
    result = podman(hardened_run_argv(image.name, ["workers", "run", "--list"]), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split()[:2] == ["NAME", "TOPIC"]
    assert {row.split()[0] for row in rows} == set(build_registry().names())


def test_the_container_runs_as_the_non_root_user_on_a_read_only_root(image: BuiltImage) -> None:
    result = podman(hardened_run_argv(image.name, ["python", "-c", PROBE]), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        f"user {image_user()}",
        "/opt/venv Read-only file system",
        "/etc Read-only file system",
        "/tmp writable",
    ]
    assert image_user() == "10001:10001"


def test_the_billing_worker_in_the_image_bills_real_messages(
    image: BuiltImage, settings: Settings
) -> None:
    input_topic, outcomes_topic = unique_name("image-billing-in"), unique_name("image-billing-out")
    group = f"{input_topic}-group"
    make_topics(settings, input_topic, outcomes_topic, DLQ_TOPIC, partitions=PARTITIONS)
    values = [
        usage_bucket(TRANSACTIONS_USAGE_METRIC_ID, float(project), ORG, project)
        for project in range(1, 13)
    ]
    values += [usage_bucket(SPANS_USAGE_METRIC_ID, 2.5, ORG, 40), b"{not json"]
    produce(settings, input_topic, ((None, value) for value in values))
    expected = sorted(outcome for value in values if (outcome := expected_outcome(value)))
    assert len(expected) == 13

    # The Procfile's billing command, on this test's topics and group and a free metrics port.
    metrics_port = free_port()
    command = [
        *procfile()["billing"],
        "--topic", input_topic, "--consumer-group", group, "--outcomes-topic", outcomes_topic,
        "--metrics-port", str(metrics_port),
    ]  # fmt: skip
    name = unique_name("image-billing")
    environment = stack_env(settings)
    log = ROOT / ".stack" / "logs" / f"test-{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as output:
        worker = subprocess.Popen(
            hardened_run_argv(image.name, command, name=name, env=list(environment)),
            env={**container_env(), **environment},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        outcomes = decoded(read_all(settings, outcomes_topic, len(expected), timeout=180))
        assert (
            sorted((o["org_id"], o["project_id"], o["category"], o["quantity"]) for o in outcomes)
            == expected
        )
        wait_until_committed(settings, group, input_topic, timeout=60)
        probe = podman(["podman", "exec", name, *billing_liveness_command()], timeout=60)
        assert probe.returncode == 0, probe.stdout + probe.stderr
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            metrics = response.read().decode()
        billed = {
            sample.labels["category"]: sample.value
            for family in text_string_to_metric_families(metrics)
            for sample in family.samples
            if sample.name == "workers_billing_outcomes_total"
        }
        assert billed == {"transaction": 12.0, "span": 1.0}
    finally:
        podman(["podman", "stop", "--time", "60", name], timeout=90)
        assert worker.wait(timeout=90) == 0, log.read_text()[-4000:]
    letters = [
        record
        for record in read_available(settings, DLQ_TOPIC)
        if record.headers.get("original_topic") == input_topic.encode()
    ]
    assert [letter.headers["reason"].split(b":")[0] for letter in letters] == [b"invalid_json"]
    assert letters[0].value == b"{not json"
