"""Fixtures of the deploy tests: the tools (installed on first use)."""

from __future__ import annotations

import pytest

from tests.support.deploy_tools import DeployTools, ensure_deploy_tools


@pytest.fixture(scope="session")
def deploy_tools() -> DeployTools:
    return ensure_deploy_tools(print)
