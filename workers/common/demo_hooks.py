"""A worker's part in `workers demo`: what it is fed, and how its results read.

`ConsumerDefinition.demo` holds a worker's `DemoHooks`; the demo (`workers/demo/`) runs every
worker that has them and never looks at a worker's name. Each hook receives a `DemoContext`:
the settings, the worker's input topic and a `produce` that sends messages there with a
progress bar.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from arroyo.backends.kafka import KafkaPayload

from workers.common.settings import Settings


@dataclass(frozen=True)
class DemoContext:
    """What `workers demo` hands a worker's hooks."""

    settings: Settings
    # The worker's registry name (its metrics carry it as the `worker` label).
    worker: str
    # The worker's input topic.
    topic: str
    # `workers demo --messages`: how many sample messages a worker should get.
    messages: int
    # The same seed on every run: the same traffic.
    seed: int
    # Shows the user a line (a command the hook runs, its result).
    echo: Callable[[str], None]
    # Sends messages to a topic, with a progress bar; returns how many were delivered.
    produce: Callable[[str, Sequence[KafkaPayload]], int]


@dataclass(frozen=True)
class DemoFeed:
    """What a feeding hook sent: messages to the worker's input topic, lines for the summary."""

    messages: int
    notes: Sequence[str] = ()
    # Set when what the hook drove failed (the demo then exits 1 and prints it).
    failure: str | None = None


@dataclass(frozen=True)
class DemoHooks:
    """How the demo feeds a worker and summarises the worker's own results."""

    # Sends the worker's sample traffic (a few messages malformed on purpose).
    feed: Callable[[DemoContext], DemoFeed]
    # Summary lines from a scrape of the worker's /metrics (the worker process was started
    # for the demo, in a consumer group of its own, so its metrics count the demo's traffic).
    summarise: Callable[[DemoContext, str], Sequence[str]]
    # Sent once everything fed is processed (e.g. an upload that waits for the worker).
    follow_up: Callable[[DemoContext], DemoFeed] | None = None
    # Whether a scrape accounts for this many records committed to the worker's output
    # topics (for a worker whose metrics trail its commits); None: any scrape will do.
    settled: Callable[[DemoContext, str, int], bool] | None = None
