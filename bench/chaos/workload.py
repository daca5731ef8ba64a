"""What a scenario runs: workloads (a stream, the workers that consume it, and how to check
what they made of it), and the verdict of each kind of unit.

A *unit* is one thing the stream asks the fleet to do once: a usage bucket to bill, a
project to flag, a chunk to store, a file to assemble. After the fault, once the stream has
stopped and every group has committed all of it, each workload compares what is in its
input topic (read back: the truth of what was sent) with what its workers made:

- *lost*: units with no effect (no outcome, no flag, no blob row or no stored object for a
  row, no assembled file), plus acknowledged input messages missing from the input topic
  (lost by Kafka itself);
- *duplicates*: effects beyond one per unit (a second outcome of a bucket, a second
  analytics event, a second blob or owner row, a second assembled file).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bench.chaos.offsets import Watched
from bench.chaos.processes import Fleet
from bench.chaos.stack import ChaosStack
from harness.worker_process import WorkerProcess


@dataclass(frozen=True)
class Verdict:
    name: str
    units: int
    lost: int
    duplicates: int
    #: At-least-once billing may bill twice after a crash: counted and reported, not a fault.
    duplicates_allowed: bool = False
    #: The consumer group whose lag and recovery this row reports (None: it has none).
    watched: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.lost > 0 or (self.duplicates > 0 and not self.duplicates_allowed)


class Workload(Protocol):
    def watched(self) -> Sequence[Watched]:
        """The groups to sample; each `name` is also the worker's name in the fleet."""
        ...

    def start_workers(self, fleet: Fleet) -> None: ...

    def start_stream(self) -> None: ...

    def stop_stream(self) -> None:
        """Stop producing (after the slice in flight) and wait for the producer to end."""
        ...

    def stream_failures(self) -> list[str]: ...

    def backlog(self) -> int:
        """Messages the stream is behind its schedule (`harness.paced.PacedProducer`)."""
        ...

    def verify(self) -> list[Verdict]: ...


@dataclass(frozen=True)
class WorkerOptions:
    """How the workers under test run."""

    stack: ChaosStack
    #: A static id each (docs/rebalancing.md, Static membership (`--group-instance-id`)).
    static_membership: bool

    def process(self, kind: str, name: str, log_name: str, *args: str) -> WorkerProcess:
        membership = (
            ("--group-instance-id", name.replace(" ", "-")) if self.static_membership else ()
        )
        return WorkerProcess(
            kind,
            *args,
            *membership,
            env=self.stack.env,
            log_dir=self.stack.logs,
            log_name=log_name,
        )
