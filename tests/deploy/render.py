"""deploy/kubernetes/base/prometheusrule.yaml is generated from deploy/prometheus's rules.

`python -m tests.deploy.render` rewrites it; `test_kubernetes.py` fails while it is stale.
The rules text is embedded as it is (comments included), indented under `spec:`.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "workers.rules.yml"
PROMETHEUS_RULE = ROOT / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/workers.rules.yml by `python -m tests.deploy.render`;
# edit the rules there. The prometheus-operator loads these groups into Prometheus (its
# ruleSelector must match this object's labels: see docs/deploying.md).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: workers
spec:
"""


def render_prometheus_rule() -> str:
    text = RULES.read_text()
    start = text.index("\ngroups:\n") + 1
    return HEADER + textwrap.indent(text[start:], "  ", lambda line: line.strip() != "")


if __name__ == "__main__":
    PROMETHEUS_RULE.write_text(render_prometheus_rule())
    print(f"wrote {PROMETHEUS_RULE.relative_to(ROOT)}")
