"""deploy/kubernetes: what `kustomize build` renders is valid and agrees with the code.

Rendered: the base and the example overlay. Validated offline: core kinds against the
Kubernetes JSON schemas of `kubernetes-validate`, custom resources against the CRD schemas
vendored in deploy/schemas. Then the fleet's own facts: one Deployment per Procfile entry
running exactly that command; for every consumer its probe, grace period, ports, security
context, PodDisruptionBudget, KEDA ScaledObject and PodMonitor; settings names and values
that `Settings.from_env` accepts; the setup Job's commands; the PrometheusRule.
"""

from __future__ import annotations

import copy
import hashlib
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from tests.deploy.promql import load_rules
from tests.deploy.render import PROMETHEUS_RULE, RULES, render_prometheus_rule
from tests.deploy.support import (
    GATEWAY_COMMAND,
    KUSTOMIZATIONS,
    ROOT,
    Manifest,
    cli_accepts,
    find,
    is_consumer_command,
    kustomize_build,
    one,
    parse_consumer_command,
    procfile,
    selects,
)
from tests.support.deploy_tools import DeployTools
from workers.common.settings import ENVIRONMENT_VARIABLES, KAFKA_CONFIG_PREFIX, Settings
from workers.common.supervisor import CHILD_SHUTDOWN_GRACE_SECONDS
from workers.gateway.app import HEALTH_ROUTE
from workers.gateway.cli import serve_gateway
from workers.gateway.services import DEFAULT_PRODUCE_TIMEOUT_SECONDS

CRDS = ROOT / "deploy" / "schemas" / "crds"
# Oldest and newest Kubernetes minor versions the manifests must be valid for.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
CUSTOM_KINDS = {"ScaledObject", "PodMonitor", "PrometheusRule"}
# Credentials: only ever in the Secret, never in the ConfigMap.
SECRET_VARIABLES = {"DATABASE_URL", "REDIS_URL", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"}
SECRET_KAFKA_PROPERTIES = re.compile(r"sasl\.(username|password)|ssl\.key\..*|.*secret.*")
DOCKERFILE_USER = re.compile(r"^USER (\d+)(?::(\d+))?$", re.MULTILINE)


@pytest.fixture(scope="module", params=sorted(KUSTOMIZATIONS))
def rendered(request: pytest.FixtureRequest, deploy_tools: DeployTools) -> list[Manifest]:
    return kustomize_build(deploy_tools.kustomize, KUSTOMIZATIONS[request.param])


@pytest.fixture(scope="module")
def overlay(deploy_tools: DeployTools) -> list[Manifest]:
    return kustomize_build(deploy_tools.kustomize, KUSTOMIZATIONS["example"])


# ---- schemas ---------------------------------------------------------------------------


def test_core_objects_are_valid_kubernetes_objects(rendered: list[Manifest]) -> None:
    core = [m for m in rendered if m["kind"] not in CUSTOM_KINDS]
    assert {m["kind"] for m in core} >= {"Deployment", "PodDisruptionBudget", "Job", "ConfigMap"}
    for version in KUBERNETES_VERSIONS:
        for manifest in core:
            kubernetes_validate.validate(manifest, version, strict=True)


def _strict(schema: Any) -> Any:
    """An OpenAPI schema that rejects unknown fields, like `kubectl --validate=strict`."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


def crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) → a validator of that custom resource's served schema."""
    validators: dict[tuple[str, str], jsonschema.protocols.Validator] = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                if version["served"]:
                    schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
                    validator = jsonschema.Draft7Validator(schema)
                    api_version = f"{spec['group']}/{version['name']}"
                    validators[(api_version, spec["names"]["kind"])] = validator
    return validators


def test_custom_resources_match_their_vendored_crd_schemas(rendered: list[Manifest]) -> None:
    validators = crd_validators()
    custom = [m for m in rendered if m["kind"] in CUSTOM_KINDS]
    assert {m["kind"] for m in custom} == CUSTOM_KINDS
    for manifest in custom:
        validator = validators[(manifest["apiVersion"], manifest["kind"])]
        errors = [
            f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
            for error in validator.iter_errors(manifest)
        ]
        assert errors == [], f"{manifest['kind']} {manifest['metadata']['name']}: {errors}"


def test_strict_crd_validation_catches_a_misspelt_field(rendered: list[Manifest]) -> None:
    scaled = copy.deepcopy(find(rendered, "ScaledObject")[0])
    scaled["spec"]["maxReplicas"] = scaled["spec"].pop("maxReplicaCount")
    validator = crd_validators()[(scaled["apiVersion"], "ScaledObject")]
    assert any("maxReplicas" in error.message for error in validator.iter_errors(scaled))


def test_vendored_crds_are_the_files_the_readme_names() -> None:
    readme = (ROOT / "deploy" / "schemas" / "README.md").read_text()
    for path in sorted(CRDS.glob("*.yaml")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert f"| `crds/{path.name}` |" in readme
        assert f"`{digest}`" in readme, f"{path.name} changed; update deploy/schemas/README.md"


# ---- one Deployment per Procfile entry ---------------------------------------------------


def test_every_procfile_entry_is_a_deployment_running_exactly_its_command(
    rendered: list[Manifest],
) -> None:
    processes = procfile()
    assert {m["metadata"]["name"] for m in find(rendered, "Deployment")} == set(processes)
    for name, argv in processes.items():
        pod = one(rendered, "Deployment", name)["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["name"] == name
        assert [*container["command"], *container["args"]] == argv


def _consumers(manifests: list[Manifest]) -> list[tuple[Manifest, Any]]:
    """(Deployment, parsed `workers run` options) of every consumer process type."""
    found = []
    for name, argv in procfile().items():
        if is_consumer_command(argv):
            found.append((one(manifests, "Deployment", name), parse_consumer_command(argv)))
    assert found, "no consumer in the Procfile"
    return found


def test_consumers_probe_their_healthcheck_file_less_often_than_max_poll_interval(
    rendered: list[Manifest],
) -> None:
    for deployment, command in _consumers(rendered):
        options = command.options
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        probe = container["livenessProbe"]
        assert options.healthcheck_file is not None
        assert probe["exec"]["command"] == [
            "python",
            "-m",
            "arroyo.healthcheck",
            str(options.healthcheck_file),
        ]
        assert probe["periodSeconds"] > options.max_poll_interval_ms / 1000
        assert probe["periodSeconds"] > options.join_timeout_seconds
        assert probe["initialDelaySeconds"] >= options.join_timeout_seconds
        assert "readinessProbe" not in container, "a consumer serves no traffic"


def test_consumers_get_time_for_a_graceful_shutdown(rendered: list[Manifest]) -> None:
    for deployment, command in _consumers(rendered):
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= 60
        assert grace >= command.options.join_timeout_seconds + CHILD_SHUTDOWN_GRACE_SECONDS


def test_consumers_expose_their_metrics_port_to_the_pod_monitor(
    rendered: list[Manifest],
) -> None:
    (monitor,) = find(rendered, "PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    for deployment, command in _consumers(rendered):
        template = deployment["spec"]["template"]
        (container,) = template["spec"]["containers"]
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert ports[endpoint["port"]] == command.options.metrics_port
        assert selects(monitor["spec"]["selector"], template["metadata"]["labels"])
    for job in find(rendered, "Job"):
        assert not selects(
            monitor["spec"]["selector"], job["spec"]["template"]["metadata"]["labels"]
        )


def _dockerfile_user() -> tuple[int, int]:
    users = DOCKERFILE_USER.findall((ROOT / "Dockerfile").read_text())
    assert users, "Dockerfile sets no numeric USER"
    uid, gid = users[-1]
    return int(uid), int(gid or uid)


def _pod_specs(manifests: list[Manifest]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{m['kind']} {m['metadata']['name']}", m["spec"]["template"]["spec"])
        for m in manifests
        if m["kind"] in ("Deployment", "Job")
    ]


def test_every_pod_runs_non_root_on_a_read_only_root_filesystem(
    rendered: list[Manifest],
) -> None:
    uid, gid = _dockerfile_user()
    for what, pod in _pod_specs(rendered):
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True, what
        assert (security["runAsUser"], security["runAsGroup"]) == (uid, gid), what
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, what
        assert pod["automountServiceAccountToken"] is False, what
        tmp_volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, what
            assert context["allowPrivilegeEscalation"] is False, what
            assert context["capabilities"] == {"drop": ["ALL"]}, what
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts.get("/tmp") in tmp_volumes, f"{what}: no emptyDir at /tmp"


def test_every_container_has_requests_and_limits(rendered: list[Manifest]) -> None:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "": 1}

    def quantity(value: str) -> float:
        number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value)).groups()  # type: ignore[union-attr]
        return float(number) * units[unit]

    for what, pod in _pod_specs(rendered):
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            resources = container["resources"]
            for resource in ("cpu", "memory"):
                request = quantity(resources["requests"][resource])
                limit = quantity(resources["limits"][resource])
                assert 0 < request <= limit, f"{what} {container['name']} {resource}"


def test_consumers_spread_over_zones_and_nodes(rendered: list[Manifest]) -> None:
    for deployment, _ in _consumers(rendered):
        template = deployment["spec"]["template"]
        constraints = template["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in constraints} == {
            "topology.kubernetes.io/zone",
            "kubernetes.io/hostname",
        }
        for constraint in constraints:
            assert selects(constraint["labelSelector"], template["metadata"]["labels"])
        # Never more group members than partitions while a rollout replaces pods.
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
        assert "replicas" not in deployment["spec"], "KEDA owns the replica count"


def test_each_consumer_has_a_disruption_budget_selecting_only_its_pods(
    rendered: list[Manifest],
) -> None:
    deployments = find(rendered, "Deployment")
    for deployment, _ in _consumers(rendered):
        budget = one(rendered, "PodDisruptionBudget", deployment["metadata"]["name"])
        assert budget["spec"]["maxUnavailable"] == 1
        chosen = [
            d["metadata"]["name"]
            for d in deployments
            if selects(budget["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert chosen == [deployment["metadata"]["name"]]
        assert deployment["spec"]["selector"] == budget["spec"]["selector"]


# ---- settings: ConfigMap and Secret ------------------------------------------------------


def _environment(manifests: list[Manifest], pod: dict[str, Any]) -> dict[str, str]:
    """The variables a container of `pod` gets from its envFrom sources, as rendered."""
    env: dict[str, str] = {}
    (container,) = pod["containers"]
    for source in container["envFrom"]:
        if "configMapRef" in source:
            env.update(one(manifests, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            # The base leaves the Secret to the overlay (or the operator): see docs/deploying.md.
            secrets = find(manifests, "Secret", source["secretRef"]["name"])
            if not secrets:
                assert source["secretRef"]["name"] == "workers-credentials"
                continue
            (secret,) = secrets
            env.update(secret.get("stringData", {}))
            env.update(
                {key: _b64(value) for key, value in secret.get("data", {}).items()},
            )
    return env


def _b64(value: str) -> str:
    import base64

    return base64.b64decode(value).decode()


def _known_variable(name: str) -> bool:
    known = {v.name for v in ENVIRONMENT_VARIABLES if not v.name.endswith(">")}
    return name in known or (name.startswith(KAFKA_CONFIG_PREFIX) and name not in known)


def test_config_map_and_secret_hold_only_real_settings_variables(
    rendered: list[Manifest],
) -> None:
    for config in find(rendered, "ConfigMap"):
        for key in config["data"]:
            assert _known_variable(key), f"ConfigMap key {key} is no settings variable"
            assert key not in SECRET_VARIABLES, f"{key} is a credential: put it in the Secret"
            if key.startswith(KAFKA_CONFIG_PREFIX):
                assert not SECRET_KAFKA_PROPERTIES.fullmatch(key[len(KAFKA_CONFIG_PREFIX) :])
    for secret in find(rendered, "Secret"):
        for key in {**secret.get("data", {}), **secret.get("stringData", {})}:
            assert _known_variable(key), f"Secret key {key} is no settings variable"


def test_the_example_overlay_gives_every_pod_settings_the_workers_accept(
    overlay: list[Manifest],
) -> None:
    for what, pod in _pod_specs(overlay):
        env = _environment(overlay, pod)
        assert env.keys() >= SECRET_VARIABLES, what
        settings = Settings.from_env(env)
        assert settings.external_services == {"kafka", "postgres", "redis"}, what
        assert str(settings.state_dir).startswith("/tmp/"), "state must live on the emptyDir"
        assert settings.kafka_config["sasl.password"], what


# ---- autoscaling ------------------------------------------------------------------------


def test_each_consumer_scales_on_its_own_group_lag_up_to_the_partition_count(
    rendered: list[Manifest],
) -> None:
    for deployment, command in _consumers(rendered):
        name = deployment["metadata"]["name"]
        options = command.options
        scaled = one(rendered, "ScaledObject", name)
        spec = scaled["spec"]
        assert spec["scaleTargetRef"] == {"name": name}
        (trigger,) = spec["triggers"]
        metadata = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert metadata["consumerGroup"] == options.consumer_group
        assert metadata["topic"] == options.input_topic
        # KEDA's default is `latest`; it must treat a partition without a committed offset
        # the way the consumer does.
        assert metadata["offsetResetPolicy"] == options.auto_offset_reset
        assert int(metadata["lagThreshold"]) > 0
        assert metadata.get("allowIdleConsumers", "false") == "false"
        env = _environment(rendered, deployment["spec"]["template"]["spec"])
        settings = Settings.from_env(env)
        # KEDA reads the brokers from the target container's environment.
        assert env[metadata["bootstrapServersFromEnv"]] == settings.kafka_bootstrap_servers
        assert spec["maxReplicaCount"] * options.processes == settings.topic_partitions
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]


# ---- setup Job ----------------------------------------------------------------------------


def test_the_setup_job_migrates_then_creates_the_topics(rendered: list[Manifest]) -> None:
    (job,) = find(rendered, "Job")
    pod = job["spec"]["template"]["spec"]
    (migrate,) = pod["initContainers"]
    (topics,) = pod["containers"]
    assert [*migrate["command"], *migrate["args"]] == ["workers", "migrate"]
    assert [*topics["command"], *topics["args"]][:3] == ["workers", "topics", "create"]
    for container in (migrate, topics):
        assert cli_accepts([*container["command"], *container["args"]])
    assert not cli_accepts(["workers", "topics", "create", "--no-such-option"])
    assert pod["restartPolicy"] == "OnFailure"
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    images = {c["image"] for _, p in _pod_specs(rendered) for c in p["containers"]}
    assert len(images) == 1, "every pod runs the one workers image"


# ---- PrometheusRule ------------------------------------------------------------------------


def test_prometheus_rule_carries_exactly_the_rules_file() -> None:
    assert PROMETHEUS_RULE.read_text() == render_prometheus_rule(), (
        "stale: run `python -m tests.deploy.render`"
    )
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_the_overlay_puts_everything_in_its_namespace(overlay: list[Manifest]) -> None:
    (namespace,) = find(overlay, "Namespace")
    for manifest in overlay:
        if manifest["kind"] != "Namespace":
            assert manifest["metadata"]["namespace"] == namespace["metadata"]["name"]
    images = {c["image"] for _, pod in _pod_specs(overlay) for c in pod["containers"]}
    assert images == {"registry.example.com/workers:0.1.0"}


def test_kustomize_is_the_pinned_version(deploy_tools: DeployTools) -> None:
    import subprocess

    from tests.support.deploy_tools import KUSTOMIZE_VERSION

    output = subprocess.run(
        [str(deploy_tools.kustomize), "version"], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == KUSTOMIZE_VERSION
    assert Path(deploy_tools.kustomize).is_file()


def test_the_pod_restart_alert_watches_every_worker_container(rendered: list[Manifest]) -> None:
    (rule,) = [r for r in load_rules() if r.get("alert") == "WorkersPodRestarting"]
    (pattern,) = re.findall(r'container=~"([^"]+)"', rule["expr"])
    containers = {
        container["name"]
        for deployment in find(rendered, "Deployment")
        for container in deployment["spec"]["template"]["spec"]["containers"]
    }
    assert {name for name in containers if re.fullmatch(pattern, name)} == containers
    assert not re.fullmatch(pattern, "workers-setup")


# ---- the gateway --------------------------------------------------------------------------


def _gateway(manifests: list[Manifest]) -> tuple[str, Manifest, dict[str, Any]]:
    """(process type, Deployment, parsed `workers serve gateway` options) of the gateway."""
    found = [(name, argv) for name, argv in procfile().items() if argv[:3] == GATEWAY_COMMAND]
    assert len(found) == 1, "the Procfile runs the gateway exactly once"
    name, argv = found[0]
    options = serve_gateway.make_context("gateway", argv[len(GATEWAY_COMMAND) :]).params
    return name, one(manifests, "Deployment", name), options


def test_the_gateway_is_served_probed_scaled_and_scraped(rendered: list[Manifest]) -> None:
    name, deployment, options = _gateway(rendered)
    assert options["host"] == "0.0.0.0", "a pod must listen beyond its loopback"
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": options["port"], "metrics": options["metrics_port"]}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": HEALTH_ROUTE, "port": "http"}, probe

    service = one(rendered, "Service", name)
    assert selects({"matchLabels": service["spec"]["selector"]}, template["metadata"]["labels"])
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"]

    (monitor,) = find(rendered, "PodMonitor")
    assert selects(monitor["spec"]["selector"], template["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"

    autoscaler = one(rendered, "HorizontalPodAutoscaler", name)
    assert autoscaler["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": name,
    }
    assert autoscaler["spec"]["minReplicas"] >= 2, "one pod down must not stop uploads"
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    assert not find(rendered, "ScaledObject", name), "two autoscalers would fight"

    budget = one(rendered, "PodDisruptionBudget", name)
    assert selects(budget["spec"]["selector"], template["metadata"]["labels"])
    grace = template["spec"]["terminationGracePeriodSeconds"]
    assert grace > DEFAULT_PRODUCE_TIMEOUT_SECONDS, "an upload in flight may finish"
