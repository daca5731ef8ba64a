"""Consumer lag sampled during a scenario, and what the samples say about a fault.

`LagSampler` reads, every `interval` seconds, each watched group's committed offsets and its
input topic's high watermarks, and records the lag: the sum over partitions of
`high watermark - committed offset` (a partition without a commit counts from its low
watermark). The committed offsets are read without joining the group (an inspector consumer
with `isolation.level=read_uncommitted`, so an exactly-once worker's open transaction does
not make the read fail); a sample that cannot be read (its broker is down or paused) is
skipped, not guessed.

From the samples (`Recovery.of`):

- the *threshold* is the highest lag sampled in the steady window before the fault (what
  the worker's batching and commit interval make normal at this rate), at least
  `floor` messages;
- the worker has *recovered* at the first sample at or after the fault's end that starts
  `CONSECUTIVE` samples in a row at or under the threshold; *recovery seconds* run from
  the fault's end to that sample (0 when the lag never left the normal range);
- the *peak lag* is the highest lag sampled from the fault's start until the recovery.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from confluent_kafka import Consumer, KafkaException, TopicPartition

from harness.waiting import wait_for
from workers.common.kafka_offsets import committed_offsets, total
from workers.common.settings import Settings

CONSECUTIVE: Final = 2
CALL_TIMEOUT_SECONDS: Final = 2.0


@dataclass(frozen=True)
class Watched:
    """One consumer group and its input topic, named as the report names it."""

    name: str
    group: str
    topic: str
    #: Messages a second the stream feeds this group.
    per_second: int


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic()
    lag: int


@dataclass
class Recovery:
    threshold: int
    recovered_at: float | None
    recovery_seconds: float | None
    peak_lag: int
    samples: int = field(default=0)

    @classmethod
    def of(
        cls,
        samples: Sequence[Sample],
        steady: tuple[float, float],
        fault: tuple[float, float],
        floor: int,
    ) -> Recovery:
        normal = [s.lag for s in samples if steady[0] <= s.at <= steady[1]]
        threshold = max([floor, *normal])
        start, end = fault
        recovered = recovered_at(samples, end, threshold)
        until = recovered if recovered is not None else float("inf")
        during = [s.lag for s in samples if start <= s.at <= until]
        return cls(
            threshold=threshold,
            recovered_at=recovered,
            recovery_seconds=None if recovered is None else max(recovered - end, 0.0),
            peak_lag=max(during, default=0),
            samples=len(during),
        )


def recovered_at(samples: Sequence[Sample], after: float, threshold: int) -> float | None:
    """The time of the first sample at or after `after` that starts `CONSECUTIVE` samples at
    or under `threshold`; None when there is no such run (yet)."""
    run: list[Sample] = []
    for sample in samples:
        if sample.at < after:
            continue
        if sample.lag <= threshold:
            run.append(sample)
            if len(run) >= CONSECUTIVE:
                return run[0].at
        else:
            run = []
    return None


class _GroupReader:
    def __init__(self, settings: Settings, watched: Watched) -> None:
        self.watched = watched
        self.__consumer = Consumer(
            {
                **settings.kafka_client_config(),
                "group.id": watched.group,
                "enable.auto.commit": False,
                "isolation.level": "read_uncommitted",
                "log_level": 0,
            }
        )
        self.__partitions: list[TopicPartition] = []

    def lag(self) -> int:
        consumer = self.__consumer
        if not self.__partitions:
            metadata = consumer.list_topics(self.watched.topic, timeout=CALL_TIMEOUT_SECONDS)
            found = metadata.topics[self.watched.topic].partitions
            self.__partitions = [TopicPartition(self.watched.topic, p) for p in sorted(found)]
        committed = {
            tp.partition: tp.offset
            for tp in consumer.committed(self.__partitions, timeout=CALL_TIMEOUT_SECONDS)
            if tp.error is None
        }
        lag = 0
        for partition in self.__partitions:
            low, high = consumer.get_watermark_offsets(
                partition, timeout=CALL_TIMEOUT_SECONDS, cached=False
            )
            offset = committed.get(partition.partition, -1)
            lag += max(high - (offset if offset >= 0 else low), 0)
        return lag

    def close(self) -> None:
        self.__consumer.close()


class LagSampler(threading.Thread):
    def __init__(self, settings: Settings, watched: Sequence[Watched], interval: float) -> None:
        super().__init__(name="lag-sampler", daemon=True)
        self.__readers = [_GroupReader(settings, w) for w in watched]
        self.__interval = interval
        self.__stopped = threading.Event()
        self.samples: dict[str, list[Sample]] = {w.name: [] for w in watched}

    def stop(self) -> None:
        self.__stopped.set()
        self.join()

    def latest(self, name: str) -> Sample | None:
        found = self.samples[name]
        return found[-1] if found else None

    def run(self) -> None:
        try:
            while not self.__stopped.is_set():
                tick = time.monotonic()
                for reader in self.__readers:
                    try:
                        lag = reader.lag()
                    except (KafkaException, KeyError):
                        continue
                    self.samples[reader.watched.name].append(Sample(time.monotonic(), lag))
                self.__stopped.wait(max(self.__interval - (time.monotonic() - tick), 0.0))
        finally:
            for reader in self.__readers:
                reader.close()


def committed_total(settings: Settings, watched: Watched) -> int:
    """The group's committed offsets, summed (polled; a transient error is retried)."""
    return total(committed_offsets(settings, watched.group, watched.topic))


def wait_for_commits(
    settings: Settings,
    watched: Sequence[Watched],
    baseline: Mapping[str, int],
    what: str,
    timeout: float,
) -> dict[str, float]:
    """Poll (every 50 ms) until every group has committed past its `baseline` total; when
    each was first seen to (`time.monotonic()`)."""
    seen: dict[str, float] = {}

    def all_seen() -> bool:
        for w in watched:
            if w.name not in seen and committed_total(settings, w) > baseline.get(w.name, 0):
                seen[w.name] = time.monotonic()
        return len(seen) == len(watched)

    wait_for(all_seen, timeout, what, interval=0.05)
    return seen
