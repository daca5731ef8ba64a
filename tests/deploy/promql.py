"""Just enough PromQL reading for the deploy tests: which metric names an expression uses."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "workers.rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "workers-fleet.json"

# Series the workers do not export: kube-state-metrics' (Kubernetes restarts).
EXTERNAL_METRICS = {"kube_pod_container_status_restarts_total": "kube-state-metrics"}

_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan",
}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_BRACES = re.compile(r"\{[^}]*\}")
_BRACKETS = re.compile(r"\[[^\]]*\]")
_IDENTIFIER = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (function names and keywords excluded)."""
    text = _STRING.sub('""', expr)
    text = _GROUPING.sub(" ", text)
    text = _BRACES.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    names = set()
    for name, call in _IDENTIFIER.findall(text):
        if call or name.lower() in _KEYWORDS or re.fullmatch(r"\d+[smhdwy]?", name):
            continue
        names.add(name)
    return names


def load_rules() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def dashboard_exprs() -> list[str]:
    return [
        target["expr"]
        for panel in load_dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in load_rules() if "record" in rule}


def exported_names_used() -> set[str]:
    """Every metric name the rules and the dashboard read that a worker must export."""
    used: set[str] = set()
    for expr in [rule["expr"] for rule in load_rules()] + dashboard_exprs():
        used |= metric_names(expr)
    return used - recorded_names() - EXTERNAL_METRICS.keys()
