"""The faults, one at a time, each with a precise start and end (`time.monotonic()`).

| fault | start | end |
|---|---|---|
| `broker-kill` | kill -9 of the target broker | the restarted broker answers metadata requests |
| `broker-pause` | SIGSTOP of the target broker | SIGCONT sent |
| `worker-kill` | the first of three kill -9 of every worker under test | the third kill |
| `postgres-restart` | `pg_ctl stop -m fast` begins | PostgreSQL answers again |
| `redis-restart` | SIGTERM to redis-server | Redis answers PING again |

A broker, PostgreSQL or Redis stays down (or paused) for the fault's `hold` seconds before it
is brought back. Each worker kill waits until every worker's new process has committed
offsets of its own (a kill mid-stream, never of a worker still starting); a killed worker is
restarted by the fleet's supervisor at once, as a pod's container would be. The time from a
kill to the new process's first commit (committed offsets polled every 50 ms) is recorded per
worker (`first_commit_s`); note that a worker killed mid-file (assemble) commits only once it
has finished that file again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from bench.chaos.brokers import Brokers
from bench.chaos.offsets import CommitWatch, Watched
from bench.chaos.processes import Fleet
from bench.chaos.stack import ChaosStack
from workers.stack.paths import StackPaths
from workers.stack.postgres import PostgresService
from workers.stack.redis import RedisService

KILLS: Final = 3
PROGRESS_TIMEOUT_SECONDS: Final = 180.0


@dataclass(frozen=True)
class FaultWindow:
    start: float
    end: float
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class FaultContext:
    stack: ChaosStack
    brokers: Brokers
    fleet: Fleet
    #: The groups under test (each `name` is also its worker's name in the fleet).
    watched: Sequence[Watched]
    #: The broker a broker fault hits (`brokers.target_broker`).
    target_broker: Callable[[], int]


class Fault(Protocol):
    @property
    def name(self) -> str: ...

    def run(self, context: FaultContext) -> FaultWindow: ...


def hold(seconds: float) -> None:
    """Keep the fault in place: a deliberate duration, not a wait for anything."""
    threading.Event().wait(seconds)


@dataclass(frozen=True)
class BrokerKill:
    hold: float
    name: str = "broker-kill"

    def run(self, context: FaultContext) -> FaultWindow:
        node = context.target_broker()
        start = time.monotonic()
        context.brokers.kill(node)
        hold(self.hold)
        context.brokers.start(node)
        return FaultWindow(start, time.monotonic(), {"broker": node, "hold_s": self.hold})


@dataclass(frozen=True)
class BrokerPause:
    hold: float
    name: str = "broker-pause"

    def run(self, context: FaultContext) -> FaultWindow:
        node = context.target_broker()
        start = time.monotonic()
        context.brokers.pause(node)
        try:
            hold(self.hold)
        finally:
            context.brokers.resume(node)
        return FaultWindow(start, time.monotonic(), {"broker": node, "hold_s": self.hold})


@dataclass(frozen=True)
class ServiceRestart:
    """Stop PostgreSQL or Redis (the way `workers stack down` does), hold, start it again."""

    service: str
    hold: float

    @property
    def name(self) -> str:
        return f"{self.service}-restart"

    def run(self, context: FaultContext) -> FaultWindow:
        paths = StackPaths.under(context.stack.root)
        settings = context.stack.settings
        service = (
            PostgresService(settings, paths)
            if self.service == "postgres"
            else RedisService(settings, paths)
        )
        start = time.monotonic()
        if not service.stop():
            raise RuntimeError(f"the chaos stack's {self.service} was not running")
        hold(self.hold)
        context.stack.up()
        return FaultWindow(start, time.monotonic(), {"hold_s": self.hold})


@dataclass(frozen=True)
class WorkerKill:
    kills: int = KILLS
    name: str = "worker-kill"

    def run(self, context: FaultContext) -> FaultWindow:
        watch = CommitWatch(context.stack.settings, context.watched)
        try:
            return self.__kill(context, watch)
        finally:
            watch.close()

    def __kill(self, context: FaultContext, watch: CommitWatch) -> FaultWindow:
        first_commit: dict[str, list[float]] = {w.name: [] for w in context.watched}
        baseline = watch.totals()
        start = end = 0.0
        for kill in range(self.kills + 1):
            # Kill only once every worker's current process has committed something.
            what = f"every worker to commit after kill {kill}" if kill else "commits"
            seen = watch.wait_past(baseline, what, PROGRESS_TIMEOUT_SECONDS)
            if kill:
                for name, at in seen.items():
                    first_commit[name].append(round(at - end, 2))
            if kill == self.kills:
                break
            end = time.monotonic()
            start = start or end
            for w in context.watched:
                context.fleet.kill(w.name)
            baseline = watch.totals()
        return FaultWindow(start, end, {"kills": self.kills, "first_commit_s": first_commit})


def fault_named(name: str, broker_hold: float, pause_hold: float, service_hold: float) -> Fault:
    faults: dict[str, Fault] = {
        "broker-kill": BrokerKill(broker_hold),
        "broker-pause": BrokerPause(pause_hold),
        "worker-kill": WorkerKill(),
        "postgres-restart": ServiceRestart("postgres", service_hold),
        "redis-restart": ServiceRestart("redis", service_hold),
    }
    return faults[name]


STREAM_FAULTS: Final = (
    "broker-kill",
    "broker-pause",
    "worker-kill",
    "postgres-restart",
    "redis-restart",
)
