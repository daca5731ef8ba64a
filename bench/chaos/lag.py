"""Consumer lag sampled during a scenario, and what the samples say about a fault.

`LagSampler` reads, every `interval` seconds, each watched group's lag
(`offsets.GroupReader.lag`: the sum over partitions of `high watermark - committed offset`)
and records it; a sample that cannot be read (its broker is down or paused) is skipped, not
guessed.

From the samples (`Recovery.of`):

- the *threshold* is the highest lag sampled in the steady window before the fault (what
  the worker's batching and commit interval make normal at this rate), at least
  `floor` messages;
- the worker has *recovered* at the first sample at or after the fault's end that starts
  `CONSECUTIVE` samples in a row at or under the threshold; *recovery seconds* run from
  the fault's end to that sample (0 when the lag never left the normal range);
- the *peak lag* is the highest lag sampled from the fault's start until the recovery;
- *seconds behind* is how long, from the fault's start until the recovery, the group was
  behind: the time between consecutive samples where either is above the threshold, or where
  they are more than `GAP_SECONDS` apart (no sample could be read: the group's coordinator or
  a partition leader was unreachable). A fault the workers ride out while it lasts (a broker
  of three killed, its partitions led by the others within seconds) shows as seconds behind
  with a recovery of 0 s after its end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from confluent_kafka import KafkaException

from bench.chaos.offsets import GroupReader, Watched
from workers.common.settings import Settings

CONSECUTIVE: Final = 2
GAP_SECONDS: Final = 2.0


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
    behind_seconds: float
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
        during = [s for s in samples if start <= s.at <= until]
        return cls(
            threshold=threshold,
            recovered_at=recovered,
            recovery_seconds=None if recovered is None else max(recovered - end, 0.0),
            peak_lag=max((s.lag for s in during), default=0),
            behind_seconds=behind_seconds(during, start, threshold),
            samples=len(during),
        )


def behind_seconds(during: Sequence[Sample], start: float, threshold: int) -> float:
    """Seconds between consecutive samples (from `start`) where the group was behind or
    could not be read (see the module's docstring)."""
    behind = 0.0
    previous = Sample(start, 0)
    for sample in during:
        gap = sample.at - previous.at
        if gap > GAP_SECONDS or sample.lag > threshold or previous.lag > threshold:
            behind += gap
        previous = sample
    return behind


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


class LagSampler(threading.Thread):
    def __init__(self, settings: Settings, watched: Sequence[Watched], interval: float) -> None:
        super().__init__(name="lag-sampler", daemon=True)
        self.__readers = [GroupReader(settings, w) for w in watched]
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
