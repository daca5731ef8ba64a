"""docs/deploying.md and docs/observability.md name things that exist."""

from __future__ import annotations

import re

from tests.deploy.promql import load_rules
from tests.deploy.support import ROOT
from tests.support.deploy_tools import KUSTOMIZE_VERSION

DEPLOYING = (ROOT / "docs" / "deploying.md").read_text()
OBSERVABILITY = (ROOT / "docs" / "observability.md").read_text()


def test_every_path_the_deploying_page_names_exists() -> None:
    paths = set(re.findall(r"`((?:deploy/|Dockerfile)[^`\s<]*)`", DEPLOYING))
    assert "deploy/kubernetes/base" in paths
    for path in paths:
        assert (ROOT / path).exists(), path


def test_deploying_names_the_pinned_kustomize() -> None:
    assert f"kustomize/v5@{KUSTOMIZE_VERSION}" in DEPLOYING


def test_the_alert_table_lists_exactly_the_alerts() -> None:
    listed = set(re.findall(r"^\| `(Workers\w+)` \|", OBSERVABILITY, re.MULTILINE))
    assert listed == {rule["alert"] for rule in load_rules() if "alert" in rule}
    recorded = {rule["record"] for rule in load_rules() if "record" in rule}
    for name in recorded:
        assert name.split(":")[1] in OBSERVABILITY
