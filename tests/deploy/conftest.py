"""Fixtures of the deploy tests: the tools (installed on first use, like `workers stack up`)."""

from __future__ import annotations

import pytest

from workers.stack.tools import DeployTools, ensure_deploy_tools


@pytest.fixture(scope="session")
def deploy_tools() -> DeployTools:
    return ensure_deploy_tools(print)
