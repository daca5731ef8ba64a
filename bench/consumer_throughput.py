"""Consumer throughput against the real local Kafka, three ways, side by side in one run.

1. a plain confluent-kafka `poll()` loop (the ceiling);
2. an Arroyo chain `RunTask(count) → CommitOffsets` with the fleet's consumer configuration;
3. the same chain with Arroyo's default configuration (`queued.min.messages=10000`).

Prints a table and, as the last line, one JSON object with the figures.
Usage: `python -m bench.consumer_throughput [--messages N]` (needs `workers stack up`).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping
from typing import Any

from arroyo.backends.kafka import KafkaConsumer, KafkaPayload
from arroyo.backends.kafka.configuration import build_kafka_consumer_configuration
from arroyo.commit import ONCE_PER_SECOND
from arroyo.processing import StreamProcessor
from arroyo.processing.strategies import CommitOffsets, RunTask
from arroyo.processing.strategies.abstract import ProcessingStrategy, ProcessingStrategyFactory
from arroyo.types import Commit, Message, Partition, Topic
from confluent_kafka import Consumer, Producer

from bench import report
from harness.kafka import make_topics, unique_name
from workers.common.kafka_config import ConsumerOptions, consumer_configuration
from workers.common.settings import Settings

PARTITIONS = 4


def produce(settings: Settings, topic: str, count: int) -> None:
    producer = Producer(
        {**settings.kafka_client_config(), "linger.ms": 20, "compression.type": "lz4"}
    )
    value = b'{"org_id":1,"project_id":3,"metric_id":9223372036854775945,"value":7.0}'
    for index in range(count):
        while True:
            try:
                producer.produce(topic, value=value, key=str(index % 64).encode())
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0


def plain_poll(settings: Settings, topic: str, count: int) -> float:
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": unique_name("bench-plain"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    seen = 0
    started: float | None = None
    while seen < count:
        message = consumer.poll(1.0)
        if message is None or message.error() is not None:
            continue
        if started is None:
            started = time.perf_counter()
        seen += 1
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return seen / elapsed


class CountingFactory(ProcessingStrategyFactory[KafkaPayload]):
    def __init__(self, count: int, on_done: Callable[[], None]) -> None:
        self.seen = 0
        self.started: float | None = None
        self.finished: float | None = None
        self.__count = count
        self.__on_done = on_done

    def __count_message(self, message: Message[KafkaPayload]) -> KafkaPayload:
        if self.started is None:
            self.started = time.perf_counter()
        self.seen += 1
        if self.seen == self.__count:
            self.finished = time.perf_counter()
            self.__on_done()
        return message.payload

    def create_with_partitions(
        self, commit: Commit, partitions: Mapping[Partition, int]
    ) -> ProcessingStrategy[KafkaPayload]:
        return RunTask(self.__count_message, CommitOffsets(commit))


def arroyo_chain(topic: str, count: int, config: dict[str, Any]) -> float:
    holder: list[StreamProcessor[KafkaPayload]] = []
    factory = CountingFactory(count, lambda: holder[0].signal_shutdown())
    processor = StreamProcessor(KafkaConsumer(config), Topic(topic), factory, ONCE_PER_SECOND)
    holder.append(processor)
    processor.run()
    assert factory.started is not None
    assert factory.finished is not None
    return factory.seen / (factory.finished - factory.started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=200_000)
    count = parser.parse_args().messages
    settings = Settings.from_env()
    topic = unique_name("bench-throughput")
    make_topics(settings, topic, partitions=PARTITIONS)
    produce(settings, topic, count)

    fleet_config = consumer_configuration(
        settings, ConsumerOptions(group_id=unique_name("bench-fleet"))
    )
    arroyo_default = build_kafka_consumer_configuration(
        settings.kafka_client_config(),
        group_id=unique_name("bench-arroyo-default"),
        auto_offset_reset="earliest",
    )
    results = {
        "plain_poll_msg_per_s": plain_poll(settings, topic, count),
        "arroyo_fleet_config_msg_per_s": arroyo_chain(topic, count, fleet_config),
        "arroyo_default_config_msg_per_s": arroyo_chain(topic, count, arroyo_default),
    }
    plain = results["plain_poll_msg_per_s"]
    report.print_table(
        ["variant", "msg/s", "vs plain"],
        [[name, f"{rate:,.0f}", f"{rate / plain:.2f}"] for name, rate in results.items()],
    )
    results["fleet_vs_arroyo_default_ratio"] = (
        results["arroyo_fleet_config_msg_per_s"] / results["arroyo_default_config_msg_per_s"]
    )
    report.print_figures({"messages": count, **{k: round(v, 2) for k, v in results.items()}})


if __name__ == "__main__":
    main()
