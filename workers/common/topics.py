"""The fleet's Kafka topics and `workers topics create`.

Every topic a registered consumer reads, writes or dead-letters to is derived from the
registry, so a new worker gets its topics without editing a list. Creation is idempotent:
existing topics are left alone and reported (with a warning when they have fewer
partitions than asked, since partitions cap how far a consumer group scales out, or fewer
replicas). New topics are replicated by the size of the cluster unless told otherwise
(`workers.common.replication`, docs/operations.md, A 3-broker cluster).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._metadata import TopicMetadata
from confluent_kafka.cimpl import NewTopic

from workers.common.kafka_config import MAX_MESSAGE_BYTES, admin_configuration
from workers.common.registry import ConsumerRegistry
from workers.common.replication import Replication, replication_for
from workers.common.settings import Settings

logger = logging.getLogger(__name__)

ADMIN_TIMEOUT_SECONDS = 30.0
DLQ_RETENTION_MS = 14 * 24 * 3600 * 1000

# Every topic accepts the largest message any worker handles, so a DLQ copy always fits.
DEFAULT_TOPIC_CONFIG: Mapping[str, str] = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicResult:
    name: str
    state: Literal["created", "exists"]
    partitions: int
    replication_factor: int
    warning: str | None = None


def fleet_topics(registry: ConsumerRegistry, partitions: int) -> list[TopicSpec]:
    specs: dict[str, TopicSpec] = {}

    def add(name: str, config: Mapping[str, str]) -> None:
        if name not in specs:
            specs[name] = TopicSpec(name, partitions, {**DEFAULT_TOPIC_CONFIG, **config})

    for definition in registry:
        add(definition.topic, definition.topic_config)
        for output in definition.output_topics:
            add(output, {})
        if definition.dlq_topic:
            add(definition.dlq_topic, {"retention.ms": str(DLQ_RETENTION_MS)})
    return [specs[name] for name in sorted(specs)]


def create_topics(
    settings: Settings, specs: list[TopicSpec], replication_factor: int | None = None
) -> list[TopicResult]:
    """Create the missing topics; `replication_factor=None` picks it from the cluster size."""
    admin = AdminClient(admin_configuration(settings))
    metadata = admin.list_topics(timeout=ADMIN_TIMEOUT_SECONDS)
    existing = metadata.topics
    replication = replication_for(len(metadata.brokers), replication_factor)
    results: dict[str, TopicResult] = {}
    missing: list[NewTopic] = []
    for spec in specs:
        if spec.name in existing:
            results[spec.name] = _existing(spec, existing[spec.name], replication)
        else:
            missing.append(
                NewTopic(
                    spec.name,
                    num_partitions=spec.partitions,
                    replication_factor=replication.factor,
                    config={
                        "min.insync.replicas": str(replication.min_insync_replicas),
                        **spec.config,
                    },
                )
            )
    if missing:
        futures = admin.create_topics(missing, request_timeout=ADMIN_TIMEOUT_SECONDS)
        for name, future in futures.items():
            spec = next(spec for spec in specs if spec.name == name)
            try:
                future.result()
                results[name] = TopicResult(name, "created", spec.partitions, replication.factor)
                logger.info("topic created", extra={"topic": name})
            except KafkaException as error:
                if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
                # Another process created it between our listing and our request.
                results[name] = TopicResult(name, "exists", spec.partitions, replication.factor)
        _wait_for_leaders(admin, [topic.topic for topic in missing])
    return [results[spec.name] for spec in specs]


def _wait_for_leaders(admin: AdminClient, names: list[str]) -> None:
    """A new topic is usable once every partition has a leader (a moment on a fresh broker)."""
    deadline = time.monotonic() + ADMIN_TIMEOUT_SECONDS
    while True:
        topics = admin.list_topics(timeout=ADMIN_TIMEOUT_SECONDS).topics
        pending = [
            name
            for name in names
            if name not in topics
            or topics[name].error is not None
            or any(p.leader < 0 or p.error is not None for p in topics[name].partitions.values())
        ]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics without partition leaders: {', '.join(pending)}")
        time.sleep(0.1)


def _existing(spec: TopicSpec, topic: TopicMetadata, wanted: Replication) -> TopicResult:
    partitions = len(topic.partitions)
    replicas = min((len(p.replicas) for p in topic.partitions.values()), default=0)
    warnings = []
    if partitions < spec.partitions:
        warnings.append(
            f"has {partitions} partitions, fewer than {spec.partitions}: "
            "consumers of it scale out only to that many members"
        )
    if replicas < wanted.factor:
        warnings.append(
            f"has {replicas} replicas per partition, fewer than {wanted.factor}: "
            "a broker failure can make it unavailable"
        )
    return TopicResult(spec.name, "exists", partitions, replicas, "; ".join(warnings) or None)
