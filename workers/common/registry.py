"""The consumer registry: every worker the fleet can run, by name.

Modelled on Sentry's `KAFKA_CONSUMERS`: a definition names the input topic, the DLQ topic,
the strategy factory builder, default batching, any worker-specific CLI options and the
worker's part in `workers demo` (`workers.common.demo_hooks`).
`workers run NAME` looks the name up here; `workers run --list` prints the table.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import click
from arroyo.backends.kafka import KafkaPayload
from arroyo.processing.strategies.abstract import ProcessingStrategyFactory

from workers.common.demo_hooks import DemoHooks
from workers.common.dlq_limit import DlqLimiter
from workers.common.metrics import FleetMetrics
from workers.common.settings import Settings


@dataclass(frozen=True)
class StrategyContext:
    """What a strategy factory builder receives when a worker process starts."""

    worker: str
    settings: Settings
    input_topic: str
    max_batch_size: int
    max_batch_time_ms: int
    metrics: FleetMetrics
    # Values of the definition's own `click_options`, keyed by parameter name.
    options: Mapping[str, Any] = field(default_factory=dict)
    # Where a strategy that consumes runs copies invalid messages (None: DLQ disabled).
    dlq_topic: str | None = None
    # What a strategy that consumes runs counts its invalid messages with, before copying
    # them (None: no DLQ limit); other chains are limited by the runner (`DlqLimitFirst`).
    dlq_limiter: DlqLimiter | None = None
    consumer_group: str = ""
    group_instance_id: str | None = None
    # Which of `workers run --processes N`'s consumer processes this is (0 for one process).
    process_index: int = 0
    # The consumer feeding the chain (a `RunConsumer` when the definition `consumes_runs`):
    # an exactly-once chain sends its group metadata with offsets and seeks it back.
    consumer: Any = None
    # A chain that commits offsets itself (in Kafka transactions) reports them here, so the
    # lag and committed-offset gauges follow: `{(topic, partition): offset}`.
    note_committed: Callable[[Mapping[tuple[str, int], int]], None] | None = None

    @property
    def max_batch_time_seconds(self) -> float:
        return self.max_batch_time_ms / 1000.0


# The factory takes `KafkaPayload` messages, or `MessageRun`s when the definition
# `consumes_runs`.
StrategyFactoryBuilder = Callable[[StrategyContext], ProcessingStrategyFactory[Any]]


@dataclass(frozen=True)
class ConsumerDefinition:
    name: str
    description: str
    topic: str
    build_strategy_factory: StrategyFactoryBuilder
    dlq_topic: str | None = None
    default_consumer_group: str | None = None
    max_batch_size: int = 1000
    max_batch_time_ms: int = 1000
    # Topics the worker writes besides its DLQ (created by `workers topics create`).
    output_topics: Sequence[str] = ()
    # Topic-level configs for the input topic (`workers topics create`).
    topic_config: Mapping[str, str] = field(default_factory=dict)
    click_options: Sequence[click.Option] = ()
    # Sample input: (count, seed) → messages, a few invalid. `workers demo` feeds it to a
    # worker that has no `demo` hooks.
    sample_traffic: Callable[[int, int], Sequence[KafkaPayload]] | None = None
    # The worker's part in `workers demo`: its sample traffic and its summary.
    demo: DemoHooks | None = None
    # Fetch with `RunConsumer`: the chain receives one `MessageRun` per partition and
    # fetch, and dead-letters invalid messages itself (to `StrategyContext.dlq_topic`),
    # after counting them with `StrategyContext.dlq_limiter` (docs/operations.md, DLQ limits).
    consumes_runs: bool = False

    @property
    def consumer_group(self) -> str:
        return self.default_consumer_group or self.name


class UnknownConsumerError(KeyError):
    def __init__(self, name: str, known: Sequence[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        return f"no consumer named {self.name!r}; known: {', '.join(self.known) or 'none'}"


class ConsumerRegistry:
    def __init__(self, definitions: Sequence[ConsumerDefinition] = ()) -> None:
        self._definitions: dict[str, ConsumerDefinition] = {}
        for definition in definitions:
            self.register(definition)

    def register(self, definition: ConsumerDefinition) -> None:
        if definition.name in self._definitions:
            raise ValueError(f"consumer {definition.name!r} is registered twice")
        self._definitions[definition.name] = definition

    def get(self, name: str) -> ConsumerDefinition:
        try:
            return self._definitions[name]
        except KeyError:
            raise UnknownConsumerError(name, sorted(self._definitions)) from None

    def names(self) -> list[str]:
        return sorted(self._definitions)

    def __iter__(self) -> Iterator[ConsumerDefinition]:
        return iter(self._definitions[name] for name in self.names())


def load_registry(loader: str) -> ConsumerRegistry:
    """`"package.module:function"` → the registry that function builds."""
    module_name, _, function_name = loader.partition(":")
    builder: Callable[[], ConsumerRegistry] = getattr(
        importlib.import_module(module_name), function_name
    )
    return builder()
