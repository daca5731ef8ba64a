"""Kafka names and topics of a test or benchmark run."""

from __future__ import annotations

import uuid

from workers.common.settings import Settings
from workers.common.topics import TopicSpec, create_topics


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_topics(settings: Settings, *names: str, partitions: int = 2) -> None:
    create_topics(settings, [TopicSpec(name, partitions) for name in names])
