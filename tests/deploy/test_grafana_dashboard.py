"""deploy/grafana: the dashboard is valid, templated, and reads only series that exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.promql import (
    DASHBOARD,
    dashboard_exprs,
    load_dashboard,
    load_rules,
    metric_names,
    recorded_names,
)
from tests.support.deploy_tools import DeployTools

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RANGE_FUNCTIONS = re.compile(r"\b(rate|irate|increase)\s*\(([^()]*)\)")
# What the issue asks the dashboard to show (matched against panel titles, case-insensitive).
REQUIRED_PANELS = (
    "throughput per worker",
    "lag per partition",
    "latency p50 / p99",
    "dlq messages by reason",
    "outcomes per category",
    "blob bytes stored",
    "backpressure and paused",
    "rebalances",
)


def _variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in load_dashboard()["templating"]["list"]}


def test_dashboard_is_grafana_json_with_a_datasource_variable() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == DASHBOARD.stem
    assert dashboard["schemaVersion"] >= 36
    variables = _variables()
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "job", "pod"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == DATASOURCE
        assert variables[name]["includeAll"] is True
        assert variables[name]["allValue"] == ".*"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


def test_dashboard_has_the_panels_the_fleet_needs() -> None:
    titles = [panel["title"].lower() for panel in load_dashboard()["panels"]]
    for wanted in REQUIRED_PANELS:
        assert any(wanted in title for title in titles), wanted


def test_rate_queries_use_the_rate_interval() -> None:
    found = 0
    for expr in dashboard_exprs():
        for function, argument in RANGE_FUNCTIONS.findall(expr):
            found += 1
            assert argument.rstrip().endswith("[$__rate_interval]"), f"{function} in {expr}"
    assert found > 0


def test_every_query_is_filtered_by_the_template_variables() -> None:
    recorded = recorded_names()
    for expr in dashboard_exprs():
        selectors = re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}", expr)
        assert {name for name, _ in selectors} == metric_names(expr), expr
        for name, matchers in selectors:
            wanted = ["namespace", "job"] if name in recorded else ["namespace", "job", "pod"]
            for label in wanted:
                assert f'{label}=~"${label}"' in matchers, f"{name} in {expr}"


def test_recording_rules_are_all_used_and_the_dashboard_uses_only_existing_ones() -> None:
    recorded = recorded_names()
    used_by_dashboard = set().union(*(metric_names(e) for e in dashboard_exprs()))
    used_by_alerts = set().union(
        *(metric_names(rule["expr"]) for rule in load_rules() if "alert" in rule)
    )
    assert {name for name in used_by_dashboard if ":" in name} <= recorded
    assert recorded <= used_by_dashboard | used_by_alerts, "unused recording rules"
    assert recorded & used_by_dashboard, "the dashboard uses no recording rule"


def test_promtool_parses_every_dashboard_query(deploy_tools: DeployTools, tmp_path: Path) -> None:
    """Each query, with the variables filled in, checked as a recording rule by promtool."""
    rules = [
        {
            "record": f"dashboard:query_{index}:check",
            "expr": re.sub(r"\$(\w+)", lambda m: "1m" if m[1] == "__rate_interval" else ".*", expr),
        }
        for index, expr in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [str(deploy_tools.promtool), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
