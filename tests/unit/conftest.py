"""Fixtures shared by the unit tests of the billing chain."""

from __future__ import annotations

import pytest
from arroyo.backends.kafka import KafkaPayload
from arroyo.backends.local.backend import LocalBroker
from prometheus_client import CollectorRegistry

from tests.support.billing_fakes import make_broker


@pytest.fixture
def broker() -> LocalBroker[KafkaPayload]:
    """An in-memory broker with the billing topics (input, outcomes, DLQ)."""
    return make_broker()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()
