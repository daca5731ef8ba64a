"""Consumer lag per partition, from librdkafka's statistics.

`ConsumerLagReporter(registry, worker)` is a confluent-kafka `stats_cb`. librdkafka calls it
every `statistics.interval.ms` (Arroyo sets 1000 ms) from inside `poll()` with its statistics
JSON; the reporter sets `workers_consumer_lag_messages{worker,topic,partition}` and
`workers_consumer_committed_offset{worker,topic,partition}` (librdkafka's `committed_offset`:
`changes()` of it is committed progress, which the `WorkersConsumerStalled` alert watches) and
then hands the same JSON to Arroyo's own `stats_callback`, so
`arroyo_consumer_librdkafka_total_queue_size` keeps working. Both gauges follow the same rules
(skips, revoked partitions) below.

Which lag: librdkafka's `consumer_lag`, the end offset (high watermark, or last stable offset
under `isolation.level=read_committed`) minus the *committed* offset. Not
`consumer_lag_stored` (end minus the *stored* offset), because:

- Arroyo only stores offsets in its auto-commit mode (`store_offsets`); with manual commits
  the stored offset stays invalid and `consumer_lag_stored` is always -1;
- the committed offset is what the group restarts from after a crash or rebalance and what
  Kafka's own tooling and KEDA's `kafka` scaler measure, so the gauge agrees with autoscaling;
- the price is up to `auto.commit.interval.ms` (plus the stats interval) of staleness, which
  does not matter for alerting on a backlog.

Skipped: the internal partition `-1` (messages with no partition yet), partitions whose lag is
`-1` (no committed offset or no watermark yet) and partitions librdkafka keeps in its
statistics but no longer fetches (`fetch_state` `none`/`stopping`/`stopped`: they were
revoked and would otherwise report a frozen lag). A partition reported before and skipped or
absent now (revoked in a rebalance) is removed from the gauge; in prometheus-client
multiprocess mode series cannot be removed, so it is set to 0 instead (the gauge is
`livesum`: the partition's new owner, possibly another process, reports the real value).

Offsets committed in Kafka transactions (exactly-once billing) are sent by a producer, so
librdkafka's consumer never learns of them and its `committed_offset` stays where the
assignment started. Such a chain reports its commits with `note_committed`; for those
partitions the gauges use the noted offset (when it is ahead), and the lag is the partition's
end offset minus it.

The callback never raises: an exception escaping a librdkafka callback would surface in the
consumer's `poll()`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

import orjson
from arroyo.backends.kafka.configuration import stats_callback as arroyo_stats_callback
from prometheus_client import CollectorRegistry, Gauge

from workers.common.metrics._common import LogOnce, multiprocess_active

logger = logging.getLogger(__name__)

#: librdkafka fetch states of a partition this consumer no longer consumes.
INACTIVE_FETCH_STATES: Final = frozenset({"none", "stopping", "stopped"})


def _partition_values(stats: Mapping[str, Any], key: str) -> dict[tuple[str, str], int]:
    """`(topic, partition) → stats[key]` for the partitions this consumer is consuming."""
    values: dict[tuple[str, str], int] = {}
    topics = stats.get("topics")
    if not isinstance(topics, Mapping):
        return values
    for topic_name, topic in topics.items():
        partitions = topic.get("partitions") if isinstance(topic, Mapping) else None
        if not isinstance(partitions, Mapping):
            continue
        for partition_key, partition in partitions.items():
            if not isinstance(partition, Mapping):
                continue
            partition_id = partition.get("partition", partition_key)
            if str(partition_id) == "-1":
                continue
            if partition.get("fetch_state") in INACTIVE_FETCH_STATES:
                continue
            value = partition.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                continue
            values[(str(topic_name), str(partition_id))] = value
    return values


def partition_lags(stats: Mapping[str, Any]) -> dict[tuple[str, str], int]:
    """`(topic, partition) → consumer_lag` for the partitions this consumer is consuming."""
    return _partition_values(stats, "consumer_lag")


def partition_committed_offsets(stats: Mapping[str, Any]) -> dict[tuple[str, str], int]:
    """`(topic, partition) → committed_offset` (same partitions; none before a commit)."""
    return _partition_values(stats, "committed_offset")


def partition_end_offsets(stats: Mapping[str, Any]) -> dict[tuple[str, str], int]:
    """`(topic, partition) → ls_offset`: the end a read_committed consumer can read to."""
    return _partition_values(stats, "ls_offset")


class ConsumerLagReporter:
    """confluent-kafka `stats_cb` feeding `workers_consumer_lag_messages` and
    `workers_consumer_committed_offset` (see module doc)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        worker: str,
        *,
        forward: Callable[[str], None] | None = arroyo_stats_callback,
    ) -> None:
        self._worker = worker
        self._forward = forward
        self._gauge = Gauge(
            "workers_consumer_lag_messages",
            "Committed-offset lag per assigned partition (librdkafka consumer_lag).",
            ("worker", "topic", "partition"),
            unit="messages",
            registry=registry,
            multiprocess_mode="livesum",
        )
        # The committed offset itself: `changes()` of it is committed progress (the stall alert).
        self._committed = Gauge(
            "workers_consumer_committed_offset",
            "Committed offset per assigned partition (librdkafka committed_offset).",
            ("worker", "topic", "partition"),
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._reported: set[tuple[str, str]] = set()
        self._reported_offsets: set[tuple[str, str]] = set()
        # Offsets committed by a transactional producer, `(topic, partition) → offset`.
        self._noted: dict[tuple[str, str], int] = {}
        self._log_once = LogOnce(logger, max_keys=8)

    def __call__(self, stats_json: str) -> None:
        try:
            self.update(orjson.loads(stats_json))
        except Exception:
            self._log_once(
                "update", logging.ERROR, "consumer lag from statistics failed", exc_info=True
            )
        if self._forward is not None:
            try:
                self._forward(stats_json)
            except Exception:
                self._log_once(
                    "forward", logging.ERROR, "Arroyo's stats_callback failed", exc_info=True
                )

    def note_committed(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Offsets this process committed outside the consumer (in a Kafka transaction)."""
        for (topic, partition), offset in offsets.items():
            key = (topic, str(partition))
            if offset > self._noted.get(key, -1):
                self._noted[key] = offset

    def update(self, stats: Mapping[str, Any]) -> None:
        """Set the gauges from parsed librdkafka statistics."""
        lags = partition_lags(stats)
        committed = partition_committed_offsets(stats)
        if self._noted:
            ends = partition_end_offsets(stats)
            for key, end in ends.items():
                noted = self._noted.get(key)
                if noted is not None and noted > committed.get(key, -1):
                    committed[key] = noted
                    lags[key] = max(end - noted, 0)
        self._reported = self._set(self._gauge, lags, self._reported)
        self._reported_offsets = self._set(self._committed, committed, self._reported_offsets)

    def _set(
        self,
        gauge: Gauge,
        values: dict[tuple[str, str], int],
        reported: set[tuple[str, str]],
    ) -> set[tuple[str, str]]:
        for (topic, partition), value in values.items():
            gauge.labels(self._worker, topic, partition).set(value)
        gone = reported - values.keys()
        if gone:
            multiprocess = multiprocess_active()
            for topic, partition in gone:
                if multiprocess:
                    gauge.labels(self._worker, topic, partition).set(0)
                else:
                    gauge.remove(self._worker, topic, partition)
        return set(values)
