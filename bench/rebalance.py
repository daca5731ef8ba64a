"""Rebalance pauses: how long each partition's outcomes stop when the billing group changes.

A live stream of usage buckets (`--rate`, default 2,000 a second) goes round-robin to an
input topic of 4 partitions; bucket `i` goes to partition `i % 4` and bills project `i`, so
every outcome names the input partition it came from. One billing worker (`workers run
billing`, exactly-once unless `--guarantee at-least-once`, commit interval `--commit-interval-ms`)
consumes it from the start. An observer reads the outcomes topic (`read_committed`) and notes
when each outcome becomes visible. Then, one after the other:

- `join`: a second member starts;
- `graceful leave`: that member gets SIGTERM (it finishes and commits its work, then leaves);
- `kill -9`: a third member starts, gets its share, and is killed with SIGKILL.

The pause of a partition in a phase is the longest gap between two consecutive outcomes of that
partition, by the time the worker produced them (the record's CreateTime), from the event until
the end of the phase (a phase ends once every partition has had outcomes again and
`--settle-seconds` have passed): how long its processing stopped. `visible s` is the longest
such gap by the time outcomes became visible to the `read_committed` observer: in exactly-once
mode it also counts the wait for a member's open transaction, which holds back every reader of
the outcome partitions it wrote to (a new member's first transaction, a dead member's until the
broker aborts it). `steady` is the same figures over a quiet stretch before any event: the floor
set by the transaction (or batch) interval.
Nothing may be lost: at the end every bucket produced must have an outcome (duplicates are
counted; exactly-once must have none).

Each protocol in `--protocols` (default `consumer,classic`: Kafka 4's KIP-848 protocol, which
the fleet uses, and the eager classic protocol it replaced) runs on its own topics and group,
side by side in one run. Prints a table and, as the last line, a JSON object.
Usage: `python -m bench.rebalance [--rate N] [--protocols consumer,classic]`
(needs `workers stack up`).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from bench.report import print_figures, print_table
from harness.billing import usage_bucket
from harness.kafka import make_topics, unique_name
from harness.waiting import wait_for
from workers.billing.counting import TRANSACTIONS_USAGE_METRIC_ID
from workers.common.kafka_config import GROUP_PROTOCOL_CLASSIC, GROUP_PROTOCOL_CONSUMER
from workers.common.settings import Settings

PARTITIONS: Final = 4
ROOT = Path(__file__).resolve().parents[1]
#: The longest a phase may take before the run is declared stuck (classic kill -9: 45 s
#: session timeout plus the rebalance).
PHASE_DEADLINE_SECONDS: Final = 120.0


def _longest_gaps(series: list[list[float]], start: float, end: float) -> list[float]:
    """Per partition, the longest gap between its times within [start, end], counting from
    its last time before `start` and up to `end` if nothing came since."""
    gaps = []
    for times in series:
        previous = max((t for t in times if t <= start), default=start)
        longest = 0.0
        for t in times:
            if start < t <= end:
                longest = max(longest, t - previous)
                previous = t
        gaps.append(max(longest, end - previous))
    return gaps


@dataclass
class Arrivals:
    """Per input partition, when its outcomes were produced (the outcome record's CreateTime,
    set by the worker's producer) and when they became visible to a `read_committed` reader;
    and how often each bucket billed. Times are wall-clock seconds."""

    produced: list[list[float]] = field(default_factory=lambda: [[] for _ in range(PARTITIONS)])
    visible: list[list[float]] = field(default_factory=lambda: [[] for _ in range(PARTITIONS)])
    billed: dict[int, int] = field(default_factory=dict)
    latest_produced: list[float] = field(default_factory=lambda: [0.0] * PARTITIONS)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, project_id: int, produced_at: float, visible_at: float) -> None:
        partition = project_id % PARTITIONS
        with self.lock:
            self.produced[partition].append(produced_at)
            self.latest_produced[partition] = max(self.latest_produced[partition], produced_at)
            self.visible[partition].append(visible_at)
            self.billed[project_id] = self.billed.get(project_id, 0) + 1

    def pauses(self, start: float, end: float) -> tuple[list[float], list[float]]:
        """Per partition, the longest gap in produced and in visible outcomes in the window."""
        with self.lock:
            produced = [sorted(times) for times in self.produced]
            return _longest_gaps(produced, start, end), _longest_gaps(self.visible, start, end)

    def all_flowing_since(self, moment: float) -> bool:
        """Whether every partition has outcomes *produced* after `moment`. (Outcomes that
        only became visible after it do not count: a dead member's last transaction holds
        back what others wrote before it, and those arrive late with older times; counting
        them ended the kill -9 phase 3 s in, before the dead member's partitions resumed.)"""
        with self.lock:
            return all(latest > moment for latest in self.latest_produced)


class Stream(threading.Thread):
    """Produces bucket `i` to partition `i % 4` at `rate` a second until stopped."""

    def __init__(self, settings: Settings, topic: str, rate: int) -> None:
        super().__init__(name="rebalance-stream", daemon=True)
        self.__settings, self.__topic, self.__rate = settings, topic, rate
        self.__stopped = threading.Event()
        self.produced = 0

    def stop(self) -> None:
        self.__stopped.set()
        self.join()

    def run(self) -> None:
        producer = Producer(
            {**self.__settings.kafka_client_config(), "linger.ms": 5, "acks": "all"}
        )
        started = time.monotonic()
        index = 0
        while not self.__stopped.is_set():
            due = int((time.monotonic() - started) * self.__rate)
            while index < due:
                value = usage_bucket(TRANSACTIONS_USAGE_METRIC_ID, 1.0, 77, index)
                producer.produce(self.__topic, value, partition=index % PARTITIONS)
                index += 1
            producer.poll(0)
            self.__stopped.wait(0.005)
        if producer.flush(60) != 0:
            raise RuntimeError("the stream's last messages were not acknowledged")
        self.produced = index


class Observer(threading.Thread):
    """Reads the outcomes topic from the start and notes each outcome's arrival."""

    def __init__(self, settings: Settings, topic: str, arrivals: Arrivals) -> None:
        super().__init__(name="rebalance-observer", daemon=True)
        self.__consumer = Consumer(
            {
                **settings.kafka_client_config(),
                "group.id": unique_name("rebalance-observer"),
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 10,
            }
        )
        self.__consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        self.__arrivals = arrivals
        self.__stopped = threading.Event()

    def stop(self) -> None:
        self.__stopped.set()
        self.join()
        self.__consumer.close()

    def run(self) -> None:
        while not self.__stopped.is_set():
            for message in self.__consumer.consume(1000, 0.05):
                value = message.value()
                if message.error() is None and value is not None:
                    project_id = orjson.loads(value)["project_id"]
                    produced_at = message.timestamp()[1] / 1000.0
                    self.__arrivals.note(project_id, produced_at, time.time())


class Member:
    """One billing group member: `workers run billing` in its own process."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        with (log_dir / f"bench-rebalance-{name}.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "workers", "run", "billing", *argv],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "WORKERS_LOG_FORMAT": "json"},
            )

    def stop(self, sig: signal.Signals) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        self.process.wait(60)


@dataclass(frozen=True)
class Phase:
    name: str
    #: Per partition: the longest gap in produced outcomes (processing), in visible ones.
    pauses: list[float]
    visible_pauses: list[float]

    @classmethod
    def measured(cls, name: str, arrivals: Arrivals, start: float, end: float) -> Phase:
        return cls(name, *arrivals.pauses(start, end))


def _settle(arrivals: Arrivals, event_at: float, settle: float, what: str) -> float:
    """Wait until every partition flows again after the event, then `settle` more seconds."""
    wait_for(
        lambda: arrivals.all_flowing_since(event_at) or None,
        PHASE_DEADLINE_SECONDS,
        f"outcomes of every partition after {what}",
    )
    time.sleep(settle)  # a measurement window, not synchronisation
    return time.time()


def measure(
    settings: Settings, protocol: str, rate: int, guarantee: str, commit_ms: int, settle: float
) -> tuple[list[Phase], int, int, int]:
    """The phases of one protocol; also the buckets produced, lost and billed twice."""
    source, outcomes = unique_name("rebalance-in"), unique_name("rebalance-out")
    make_topics(settings, source, outcomes, partitions=PARTITIONS)
    argv = [
        "--topic", source, "--outcomes-topic", outcomes,
        "--consumer-group", f"{source}-group", "--group-protocol", protocol,
        "--processing-guarantee", guarantee, "--commit-interval-ms", str(commit_ms),
    ]  # fmt: skip
    logs = settings.state_dir / "logs"
    arrivals = Arrivals()
    observer = Observer(settings, outcomes, arrivals)
    stream = Stream(settings, source, rate)
    members = [Member(f"{protocol}-a", argv, logs)]
    phases: list[Phase] = []
    observer.start()
    stream.start()
    try:
        begun = time.time()
        quiet_from = _settle(arrivals, begun, settle, "the first member started")
        quiet_to = _settle(arrivals, quiet_from, settle, "a quiet stretch")
        phases.append(Phase.measured("steady", arrivals, quiet_from, quiet_to))

        members.append(Member(f"{protocol}-b", argv, logs))
        event = time.time()
        end = _settle(arrivals, event, settle, "a join")
        phases.append(Phase.measured("join", arrivals, event, end))

        event = time.time()
        members[1].stop(signal.SIGTERM)
        end = _settle(arrivals, event, settle, "a graceful leave")
        phases.append(Phase.measured("graceful leave", arrivals, event, end))

        members.append(Member(f"{protocol}-c", argv, logs))
        _settle(arrivals, time.time(), 2 * settle, "a second join")
        event = time.time()
        members[2].stop(signal.SIGKILL)
        end = _settle(arrivals, event, settle, "kill -9 of a member")
        phases.append(Phase.measured("kill -9", arrivals, event, end))
    finally:
        stream.stop()
        for member in members[1:]:
            member.stop(signal.SIGKILL)
    deadline = time.monotonic() + PHASE_DEADLINE_SECONDS
    while len(arrivals.billed) < stream.produced and time.monotonic() < deadline:
        time.sleep(0.1)
    members[0].stop(signal.SIGTERM)
    observer.stop()
    lost = sum(1 for index in range(stream.produced) if index not in arrivals.billed)
    duplicates = sum(count - 1 for count in arrivals.billed.values())
    return phases, stream.produced, lost, duplicates


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rate", type=int, default=2_000)
    parser.add_argument(
        "--protocols", default=f"{GROUP_PROTOCOL_CONSUMER},{GROUP_PROTOCOL_CLASSIC}"
    )
    parser.add_argument(
        "--guarantee", default="exactly-once", choices=("exactly-once", "at-least-once")
    )
    parser.add_argument("--commit-interval-ms", type=int, default=200)
    parser.add_argument("--settle-seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    rows: list[list[object]] = []
    figures: dict[str, Any] = {"rate": args.rate, "guarantee": args.guarantee}
    for protocol in args.protocols.split(","):
        phases, produced, lost, duplicates = measure(
            settings,
            protocol,
            args.rate,
            args.guarantee,
            args.commit_interval_ms,
            args.settle_seconds,
        )
        for phase in phases:
            rows.append(
                [
                    protocol,
                    phase.name,
                    *(f"{pause:.2f}" for pause in phase.pauses),
                    f"{max(phase.pauses):.2f}",
                    f"{max(phase.visible_pauses):.2f}",
                ]
            )
        figures[protocol] = {
            "pauses_seconds": {phase.name: [round(p, 3) for p in phase.pauses] for phase in phases},
            "visible_pauses_seconds": {
                phase.name: [round(p, 3) for p in phase.visible_pauses] for phase in phases
            },
            "produced": produced,
            "lost": lost,
            "duplicates": duplicates,
        }
    print_table(
        [
            "protocol",
            "phase",
            *(f"p{index} s" for index in range(PARTITIONS)),
            "longest s",
            "visible s",
        ],
        rows,
    )
    print_figures(figures)


if __name__ == "__main__":
    main()
