"""librdkafka configurations for the fleet's consumers, producers and admin clients.

Arroyo's builders are used so Arroyo's own flags and statistics keep working, with the
settings that matter for correctness and speed made explicit:

- offsets are committed by Arroyo itself (`enable.auto.commit=false`), synchronously, on the
  worker's commit interval and at shutdown. Arroyo's default since 2.33 (librdkafka auto-commit
  of stored offsets) stores an offset *before* the DLQ copy of an invalid message before it is
  acknowledged, so a crash in that window loses the DLQ copy; committing ourselves flushes the
  DLQ first. One synchronous commit per interval costs a few milliseconds.
- `queued.min.messages` defaults to librdkafka's own 100000 instead of Arroyo's 10000, which
  throttles a consumer to about 20k msg/s (docs/reference.md, Arroyo and librdkafka).
- producers wait for all in-sync replicas and are idempotent, so a retried produce never
  duplicates or reorders.
- consumers join their group with Kafka 4's consumer group protocol (KIP-848,
  `group.protocol=consumer`) by default: assignments change incrementally, partitions that stay
  with a member keep being processed and committed, and failure detection (session timeout,
  heartbeat interval) is set on the broker, not here (docs/rebalancing.md). `classic` is the
  eager protocol of older brokers (range/round-robin, 45 s session timeout).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from arroyo.backends.kafka.configuration import (
    build_kafka_consumer_configuration,
    build_kafka_producer_configuration,
)

from workers.common.settings import Settings

DEFAULT_COMMIT_INTERVAL_MS = 1000
DEFAULT_QUEUED_MIN_MESSAGES = 100_000
DEFAULT_QUEUED_MAX_MESSAGES_KBYTES = 65_536
DEFAULT_MAX_POLL_INTERVAL_MS = 300_000
GROUP_PROTOCOL_CONSUMER = "consumer"
GROUP_PROTOCOL_CLASSIC = "classic"
GROUP_PROTOCOLS = (GROUP_PROTOCOL_CONSUMER, GROUP_PROTOCOL_CLASSIC)
# Large enough for 8 MiB chunks plus headers and batch overhead.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
FETCH_MAX_BYTES = MAX_MESSAGE_BYTES
MAX_PARTITION_FETCH_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class ConsumerOptions:
    group_id: str
    auto_offset_reset: str = "earliest"
    max_poll_interval_ms: int = DEFAULT_MAX_POLL_INTERVAL_MS
    group_instance_id: str | None = None
    queued_min_messages: int = DEFAULT_QUEUED_MIN_MESSAGES
    strict_offset_reset: bool = False
    group_protocol: str = GROUP_PROTOCOL_CONSUMER
    # Names the member in `workers groups describe` (librdkafka's default is `rdkafka`).
    client_id: str | None = None


def consumer_configuration(
    settings: Settings,
    options: ConsumerOptions,
    stats_callback: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        "max.poll.interval.ms": options.max_poll_interval_ms,
        # A fetch answer is one allocation in librdkafka: kept at or under 16 MiB, glibc serves
        # it again from memory already mapped instead of mapping (and zeroing) fresh pages
        # every time, which took about a fifth of the CPU of large-chunk ingest
        # (docs/benchmarks.md, Blob ingest). A message larger than either limit is still
        # fetched, alone (KIP-74).
        "fetch.max.bytes": FETCH_MAX_BYTES,
        "max.partition.fetch.bytes": MAX_PARTITION_FETCH_BYTES,
        # librdkafka waits this long to fetch again once its prefetch queue was full
        # (default 1000 ms): with large messages that stalls a consumer for a second.
        "fetch.queue.backoff.ms": 10,
        # Never read an aborted or still-open transaction (librdkafka's default, made explicit:
        # billing's exactly-once mode and every reader of its outputs rely on it).
        "isolation.level": "read_committed",
        "group.protocol": options.group_protocol,
        **({"client.id": options.client_id} if options.client_id else {}),
        **settings.kafka_config,
    }
    if options.group_instance_id:
        overrides["group.instance.id"] = options.group_instance_id
    config = build_kafka_consumer_configuration(
        {},
        group_id=options.group_id,
        auto_offset_reset=options.auto_offset_reset,
        queued_min_messages=options.queued_min_messages,
        queued_max_messages_kbytes=DEFAULT_QUEUED_MAX_MESSAGES_KBYTES,
        bootstrap_servers=[settings.kafka_bootstrap_servers],
        override_params=overrides,
        strict_offset_reset=options.strict_offset_reset,
        enable_auto_commit=False,
    )
    # Arroyo's builder installs its own statistics callback after the overrides; ours wraps it.
    if stats_callback is not None:
        config["stats_cb"] = stats_callback
    return config


def producer_configuration(
    settings: Settings, client_id: str, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "client.id": client_id,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.max.bytes": MAX_MESSAGE_BYTES,
        **(overrides or {}),
        **settings.kafka_config,
    }
    return build_kafka_producer_configuration(
        {}, bootstrap_servers=[settings.kafka_bootstrap_servers], override_params=params
    )


def admin_configuration(settings: Settings) -> dict[str, Any]:
    return settings.kafka_client_config()
