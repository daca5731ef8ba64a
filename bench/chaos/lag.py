"""How far each group is behind its stream, sampled during a scenario, and what the samples
say about a fault.

`LagSampler` records, every `interval` seconds, per watched group:

- the *consumer lag* (`offsets.GroupReader.lag`: the sum over partitions of
  `high watermark - committed offset`); a sample whose lag cannot be read (its broker is
  down or paused) is skipped, not guessed;
- the stream's *backlog*: messages the paced producer should have sent by now and has not
  (`harness.paced.PacedProducer.backlog`). A fault can stop the producers too (a paused
  broker holds `acks=all` writes until it is fenced); the stream then catches up once it
  can, and the workers have that backlog still to read. The consumer lag alone would look
  normal while nothing flows.

A sample is *behind* by `lag + backlog` messages: how far the group's committed position is
from where the stream would be. From the samples (`Recovery.of`):

- the *threshold* is the most a sample was behind in the steady window before the fault
  (what batching, commit intervals and the producer's slices make normal at this rate), at
  least `floor` messages;
- the group has *recovered* at the first sample at or after the fault's end that starts
  `CONSECUTIVE` samples in a row at or under the threshold; *recovery seconds* run from the
  fault's end to that sample (0 when it never left the normal range);
- the *peak lag* is the highest consumer lag sampled from the fault's start until the
  recovery, and the *peak backlog* the highest backlog;
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
    backlog: int = 0

    @property
    def behind(self) -> int:
        return self.lag + self.backlog


@dataclass
class Recovery:
    threshold: int
    recovered_at: float | None
    recovery_seconds: float | None
    peak_lag: int
    peak_backlog: int
    behind_seconds: float

    @classmethod
    def of(
        cls,
        samples: Sequence[Sample],
        steady: tuple[float, float],
        fault: tuple[float, float],
        floor: int,
    ) -> Recovery:
        normal = [s.behind for s in samples if steady[0] <= s.at <= steady[1]]
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
            peak_backlog=max((s.backlog for s in during), default=0),
            behind_seconds=behind_seconds(during, start, threshold),
        )


def behind_seconds(during: Sequence[Sample], start: float, threshold: int) -> float:
    """Seconds between consecutive samples (from `start`) where the group was behind or
    could not be read (see the module's docstring)."""
    behind = 0.0
    previous = Sample(start, 0)
    for sample in during:
        gap = sample.at - previous.at
        if gap > GAP_SECONDS or sample.behind > threshold or previous.behind > threshold:
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
        if sample.behind <= threshold:
            run.append(sample)
            if len(run) >= CONSECUTIVE:
                return run[0].at
        else:
            run = []
    return None


class LagSampler(threading.Thread):
    """Samples every watched group; `backlogs` gives each group's stream backlog by name."""

    def __init__(
        self,
        settings: Settings,
        watched: Sequence[Watched],
        backlogs: Mapping[str, Callable[[], int]],
        interval: float,
    ) -> None:
        super().__init__(name="lag-sampler", daemon=True)
        self.__readers = [GroupReader(settings, w) for w in watched]
        self.__backlogs = backlogs
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
                    name = reader.watched.name
                    try:
                        lag = reader.lag()
                    except (KafkaException, KeyError):
                        continue
                    backlog = self.__backlogs[name]()
                    self.samples[name].append(Sample(time.monotonic(), lag, backlog))
                self.__stopped.wait(max(self.__interval - (time.monotonic() - tick), 0.0))
        finally:
            for reader in self.__readers:
                reader.close()
