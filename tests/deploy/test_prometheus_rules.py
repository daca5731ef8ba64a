"""deploy/prometheus: the rules load in promtool and every alert has a unit test that fires it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.deploy.promql import RULES, load_rules
from tests.support.deploy_tools import DeployTools

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULE_TESTS = PROMETHEUS_DIR / "tests" / "workers.rules.test.yml"
# `level:metric:operations`, https://prometheus.io/docs/practices/rules/
RECORD_NAME = re.compile(r"[a-z_]+:[a-z_]+:[a-z0-9_]+")


def promtool(tools: DeployTools, *args: str, cwd: Path = PROMETHEUS_DIR) -> str:
    result = subprocess.run(
        [str(tools.promtool), *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_promtool_accepts_the_rules(deploy_tools: DeployTools) -> None:
    output = promtool(deploy_tools, "check", "rules", str(RULES))
    assert f"SUCCESS: {len(load_rules())} rules found" in output


def test_promtool_unit_tests_pass(deploy_tools: DeployTools) -> None:
    output = promtool(deploy_tools, "test", "rules", str(RULE_TESTS.relative_to(PROMETHEUS_DIR)))
    assert "SUCCESS" in output


def test_every_alert_has_a_unit_test_in_which_it_fires() -> None:
    alerts = {rule["alert"] for rule in load_rules() if "alert" in rule}
    fired: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            if check.get("exp_alerts"):
                fired.add(check["alertname"])
    assert alerts, "no alerts"
    assert alerts - fired == set(), "alerts without a firing promtool test case"
    assert fired - alerts == set(), "tests of alerts that do not exist"


def test_rules_follow_the_naming_conventions() -> None:
    for rule in load_rules():
        if "record" in rule:
            assert RECORD_NAME.fullmatch(rule["record"]), rule["record"]
        else:
            assert re.fullmatch(r"Workers[A-Z][A-Za-z]+", rule["alert"]), rule["alert"]
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert {"summary", "description"} <= rule["annotations"].keys()
        # rate()/increase()/changes() of a counter: counters end in _total.
        for function, metric in re.findall(r"\b(rate|increase)\((\w+)", rule["expr"]):
            assert metric.endswith(("_total", "_bucket", "_count")), (
                f"{function}({metric}) in {rule}"
            )
