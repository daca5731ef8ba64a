"""Sending the demo's traffic: a producer with progress bars, and the hooks of a worker that
only has `sample_traffic` (fed as is; summarised by the steps its messages went through)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from arroyo.backends.kafka import KafkaPayload
from confluent_kafka import Producer
from rich.progress import Progress, TaskID

from workers.common.demo_hooks import DemoContext, DemoFeed, DemoHooks
from workers.common.kafka_config import producer_configuration
from workers.common.producing import produce_waiting
from workers.common.registry import ConsumerDefinition
from workers.common.settings import Settings

FLUSH_TIMEOUT_SECONDS = 60.0
SampleTraffic = Callable[[int, int], Sequence[KafkaPayload]]


class DemoProducer:
    """Produces message lists, one progress bar each; fails on any undelivered message."""

    def __init__(self, settings: Settings) -> None:
        self.__producer = Producer(producer_configuration(settings, client_id="workers-demo"))

    def produce(self, topic: str, messages: Sequence[KafkaPayload], progress: Progress) -> int:
        task = progress.add_task(f"produce → {topic}", total=len(messages))
        errors: list[str] = []

        def delivered(error: object, _message: object, task: TaskID = task) -> None:
            if error is not None:
                errors.append(str(error))
            progress.advance(task)

        for message in messages:
            produce_waiting(
                self.__producer,
                topic,
                value=message.value,
                key=message.key,
                headers=list(message.headers),
                on_delivery=delivered,
            )
        remaining = self.__producer.flush(FLUSH_TIMEOUT_SECONDS)
        if remaining or errors:
            raise RuntimeError(
                f"{topic}: {remaining} undelivered, {len(errors)} failed"
                + (f" (first: {errors[0]})" if errors else "")
            )
        return len(messages)


def sample_traffic_hooks(sample_traffic: SampleTraffic) -> DemoHooks:
    def feed(demo: DemoContext) -> DemoFeed:
        return DemoFeed(demo.produce(demo.topic, sample_traffic(demo.messages, demo.seed)))

    return DemoHooks(feed=feed, summarise=_steps_seen)


def _steps_seen(_demo: DemoContext, metrics_text: str) -> list[str]:
    steps = {
        line.split('step="', 1)[1].split('"', 1)[0]
        for line in metrics_text.splitlines()
        if line.startswith("workers_step_messages_in_total{")
    }
    return ["steps: " + ", ".join(sorted(steps))] if steps else []


def demo_hooks(definition: ConsumerDefinition) -> DemoHooks | None:
    """The worker's own hooks, else the plain ones of its `sample_traffic`, else None."""
    if definition.demo is not None:
        return definition.demo
    if definition.sample_traffic is not None:
        return sample_traffic_hooks(definition.sample_traffic)
    return None
