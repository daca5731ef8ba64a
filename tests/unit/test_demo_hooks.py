"""The demo takes what is worker-specific from each definition's hooks, never from its name."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from arroyo.backends.kafka import KafkaPayload
from arroyo.types import Partition, Topic

from workers.common.demo_hooks import DemoContext, DemoFeed, DemoHooks
from workers.common.dlq import dlq_headers, dlq_origin
from workers.common.registry import ConsumerDefinition
from workers.demo.traffic import demo_hooks
from workers.fleet import build_registry

DEMO = Path(__file__).resolve().parents[2] / "workers" / "demo"
# The modules that drive every worker alike (the others are one worker's hooks).
GENERIC_MODULES = ("__init__.py", "run.py", "processes.py", "summary.py", "traffic.py")


def _definition(**overrides: object) -> ConsumerDefinition:
    return ConsumerDefinition(
        name="echo",
        description="test",
        topic="echo-in",
        build_strategy_factory=lambda context: None,  # type: ignore[arg-type,return-value]
        **overrides,  # type: ignore[arg-type]
    )


def _context(sent: list[tuple[str, int]]) -> DemoContext:
    def produce(topic: str, messages: Sequence[KafkaPayload]) -> int:
        sent.append((topic, len(messages)))
        return len(messages)

    return DemoContext(
        settings=None,  # type: ignore[arg-type]
        worker="echo",
        topic="echo-in",
        messages=5,
        seed=1,
        echo=print,
        produce=produce,
    )


def test_every_fleet_worker_has_its_own_demo_hooks() -> None:
    for definition in build_registry():
        assert definition.demo is not None, definition.name
        assert demo_hooks(definition) is definition.demo


def test_a_worker_with_only_sample_traffic_is_fed_it() -> None:
    def traffic(count: int, seed: int) -> list[KafkaPayload]:
        return [KafkaPayload(None, f"{seed}-{i}".encode(), []) for i in range(count)]

    hooks = demo_hooks(_definition(sample_traffic=traffic))
    assert hooks is not None
    sent: list[tuple[str, int]] = []
    assert hooks.feed(_context(sent)) == DemoFeed(5)
    assert sent == [("echo-in", 5)]
    metrics = 'workers_step_messages_in_total{worker="echo",step="decode"} 5.0\n'
    assert hooks.summarise(_context(sent), metrics) == ["steps: decode"]


def test_a_worker_without_hooks_or_traffic_is_left_out() -> None:
    assert demo_hooks(_definition()) is None
    own = DemoHooks(feed=lambda demo: DemoFeed(0), summarise=lambda demo, text: [])
    assert demo_hooks(_definition(demo=own)) is own


def test_the_generic_demo_modules_never_name_a_worker() -> None:
    names = [definition.name for definition in build_registry()]
    for module in GENERIC_MODULES:
        text = (DEMO / module).read_text()
        assert not [name for name in names if f'"{name}"' in text or f"'{name}'" in text], module


def test_a_dlq_copy_names_the_message_it_was_made_of() -> None:
    # The demo counts only DLQ copies of the input its own group consumed.
    original = [("original_offset", b"7")]  # a header of the message itself
    headers = dlq_headers(original, Partition(Topic("in"), 2), 41, "invalid_json", "echo")
    assert dlq_origin(headers) == ("in", 2, 41)
    assert dlq_origin(original) is None
