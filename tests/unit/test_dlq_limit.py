"""DLQ limits: Arroyo's `DlqLimitState` accounting as the fleet seeds it, the error a user
sees, and the runner's `EnforceDlqLimit` under a real `StreamProcessor` (LocalBroker)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from datetime import datetime

import pytest
from arroyo.backends.kafka import KafkaPayload
from arroyo.backends.local.backend import LocalBroker
from arroyo.backends.local.storages.memory import MemoryMessageStorage
from arroyo.dlq import DlqLimit, DlqLimitState, InvalidMessage
from arroyo.processing import StreamProcessor
from arroyo.processing.strategies import CommitOffsets, RunTask
from arroyo.processing.strategies.abstract import ProcessingStrategy, ProcessingStrategyFactory
from arroyo.types import BrokerValue, Commit, Message, Partition, Topic
from prometheus_client import CollectorRegistry

from tests.support.run_options import default_run_options
from workers.common.dlq import build_dlq_policy
from workers.common.dlq_limit import (
    ASSUMED_VALID_MESSAGES,
    DEFAULT_DLQ_LIMIT,
    DlqLimiter,
    DlqLimitExceeded,
    limits_enforced,
)
from workers.common.metrics import FleetMetrics
from workers.common.registry import ConsumerDefinition, StrategyContext
from workers.common.runner import build_processor
from workers.common.settings import Settings

INPUT = Topic("input")
DLQ = Topic("input-dlq")
P0, P1 = Partition(INPUT, 0), Partition(INPUT, 1)


class Limited:
    """A `DlqLimiter` with its own metrics registry."""

    def __init__(self, limit: DlqLimit = DEFAULT_DLQ_LIMIT, worker: str = "billing") -> None:
        self.registry = CollectorRegistry()
        self.limiter = DlqLimiter(limit, worker, FleetMetrics(self.registry, worker))
        self.worker = worker

    def stops(self, limit: str) -> float:
        value = self.registry.get_sample_value(
            "workers_dlq_limit_exceeded_total", {"worker": self.worker, "limit": limit}
        )
        assert value is not None, "the series is exported from the start"
        return value


def test_one_poison_message_right_after_an_assignment_is_dead_lettered() -> None:
    # Arroyo's own start (no valid message yet) refuses it: a restart would stop again on it.
    arroyo = DlqLimitState(DEFAULT_DLQ_LIMIT, last_invalid_offsets={P0: 99})
    assert not arroyo.record_invalid_message(BrokerValue(None, P0, 100, datetime.now()))
    limited = Limited()
    limited.limiter.reset({P0: 100})
    limited.limiter.record(P0, 100, "invalid_json: unexpected character")
    assert limited.stops("max_invalid_ratio") == 0


def test_only_invalid_input_stops_at_the_ratio_with_a_clear_error() -> None:
    limited = Limited()
    limited.limiter.reset({P0: 40, P1: 7})
    allowed = int(ASSUMED_VALID_MESSAGES * 0.01)
    for offset in range(40, 40 + allowed):
        limited.limiter.record(P0, offset, f"invalid_json: at {offset}")
    with pytest.raises(DlqLimitExceeded) as raised:
        limited.limiter.record(P0, 40 + allowed, "not_an_object: a list " + "x" * 500)
    exceeded = raised.value
    assert (exceeded.limit, exceeded.partition, exceeded.offset) == ("max_invalid_ratio", P0, 50)
    assert str(exceeded) == "\n".join(
        [
            "billing stopped: DLQ limit exceeded at input[0] offset 50: "
            "--dlq-max-invalid-ratio 0.01: 11 invalid for 1000 valid messages (ratio 0.011) "
            "since the partition was assigned (1000 valid ones assumed at the assignment).",
            "Nothing from that offset on was committed. Remove the cause (see the reasons), "
            "or raise the limit (--dlq-max-invalid-ratio, --dlq-max-consecutive-invalid), "
            "and start it again.",
            "Last 5 invalid message(s):",
            "  input[0] offset 46: invalid_json: at 46",
            "  input[0] offset 47: invalid_json: at 47",
            "  input[0] offset 48: invalid_json: at 48",
            "  input[0] offset 49: invalid_json: at 49",
            "  input[0] offset 50: not_an_object: a list " + "x" * 178,  # cut at 200
        ]
    )
    assert limited.stops("max_invalid_ratio") == 1
    assert limited.stops("max_consecutive_invalid") == 0


def test_the_consecutive_limit_counts_runs_per_partition() -> None:
    limited = Limited(DlqLimit(max_invalid_ratio=None, max_consecutive_count=3))
    limited.limiter.reset({P0: 0, P1: 0})
    for offset in (0, 1, 2):  # a run of 3 from the start: at the limit, not beyond it
        limited.limiter.record(P0, offset, "bad")
    limited.limiter.record(P1, 0, "bad")  # another partition's run is its own
    for offset in (4, 5, 6):  # a valid message (3) ended the run; a new one of 3
        limited.limiter.record(P0, offset, "bad")
    with pytest.raises(DlqLimitExceeded, match=r"--dlq-max-consecutive-invalid 3: 4 invalid"):
        limited.limiter.record(P0, 7, "bad")
    assert limited.stops("max_consecutive_invalid") == 1
    assert limited.stops("max_invalid_ratio") == 0


def test_a_steady_share_under_the_ratio_never_stops_and_a_reset_starts_afresh() -> None:
    limited = Limited()
    limited.limiter.reset({P0: 0})
    for offset in range(0, 200_000, 200):  # 0.5 %, half the default limit
        limited.limiter.record(P0, offset, "bad")
    # A new assignment counts from scratch: ten more at once are within the start's credit.
    limited.limiter.reset({P0: 500_000})
    for offset in range(500_000, 500_010):
        limited.limiter.record(P0, offset, "bad")
    with pytest.raises(DlqLimitExceeded):
        limited.limiter.record(P0, 500_010, "bad")


def test_a_partition_first_seen_after_the_reset_gets_the_same_start() -> None:
    limited = Limited()
    limited.limiter.reset({})
    for offset in range(300, 310):
        limited.limiter.record(P1, offset, "bad")
    with pytest.raises(DlqLimitExceeded, match="11 invalid for 1000 valid"):
        limited.limiter.record(P1, 310, "bad")


def test_off_switches_a_limit_off() -> None:
    assert limits_enforced(DEFAULT_DLQ_LIMIT)
    assert limits_enforced(DlqLimit(max_invalid_ratio=None, max_consecutive_count=5))
    assert not limits_enforced(DlqLimit(max_invalid_ratio=None, max_consecutive_count=None))


# -- under a StreamProcessor -----------------------------------------------------------------


class ValidateFactory(ProcessingStrategyFactory[KafkaPayload]):
    """RunTask(validate) → CommitOffsets; values starting with `bad` are invalid."""

    def __init__(self, context: StrategyContext | None = None) -> None:
        self.processed: list[bytes] = []

    def __validate(self, message: Message[KafkaPayload]) -> KafkaPayload:
        value = message.value
        assert isinstance(value, BrokerValue)
        if message.payload.value.startswith(b"bad"):
            raise InvalidMessage(value.partition, value.offset, reason="bad_value: starts bad")
        self.processed.append(message.payload.value)
        return message.payload

    def create_with_partitions(
        self, commit: Commit, partitions: Mapping[Partition, int]
    ) -> ProcessingStrategy[KafkaPayload]:
        return RunTask(self.__validate, CommitOffsets(commit))


class Worker:
    def __init__(self, values: list[bytes], limit: DlqLimit) -> None:
        self.broker: LocalBroker[KafkaPayload] = LocalBroker(MemoryMessageStorage())
        self.broker.create_topic(INPUT, partitions=1)
        self.broker.create_topic(DLQ, partitions=1)
        producer = self.broker.get_producer()
        for value in values:
            producer.produce(INPUT, KafkaPayload(None, value, [])).result()
        self.factories: list[ValidateFactory] = []

        def build(context: StrategyContext) -> ValidateFactory:
            self.factories.append(ValidateFactory(context))
            return self.factories[-1]

        definition = ConsumerDefinition(
            name="validate",
            description="test",
            topic=INPUT.name,
            build_strategy_factory=build,
            dlq_topic=DLQ.name,
        )
        metrics = FleetMetrics(CollectorRegistry(), "validate")
        options = dataclasses.replace(
            default_run_options(definition), dlq_limit=limit, commit_interval_ms=10
        )
        consumer = self.broker.get_consumer("validate")
        commit_offsets = consumer.commit_offsets
        self.commits: dict[Partition, int] = {}

        def recording_commit() -> Mapping[Partition, int] | None:
            committed = commit_offsets()
            self.commits.update(committed or {})
            return committed

        consumer.commit_offsets = recording_commit  # type: ignore[method-assign]
        self.processor: StreamProcessor[KafkaPayload] = build_processor(
            consumer,
            definition,
            options,
            Settings.from_env({}),
            metrics,
            dlq_policy=build_dlq_policy(self.broker.get_producer(), DLQ.name, "validate", metrics),
        )

    def committed(self) -> int:
        return self.commits.get(Partition(INPUT, 0), 0)

    def dead_letters(self) -> list[int]:
        offsets: list[int] = []
        while (value := self.broker.consume(Partition(DLQ, 0), len(offsets))) is not None:
            offsets.append(int(dict(value.payload.headers)["original_offset"]))
        return offsets


def test_a_worker_fed_only_invalid_input_stops_before_committing_the_breaking_message() -> None:
    worker = Worker([b"good-0", b"good-1"] + [b"bad"] * 50, DlqLimit(max_consecutive_count=5))
    with pytest.raises(DlqLimitExceeded) as raised:
        worker.processor.run()
    exceeded = raised.value
    assert exceeded.limit == "max_consecutive_invalid"
    assert exceeded.offset == 2 + 5  # the sixth invalid message in a row
    assert worker.committed() <= exceeded.offset, "committed past the breaking message"
    assert worker.dead_letters() == [2, 3, 4, 5, 6], "only the messages within the limit"
    assert worker.factories[0].processed == [b"good-0", b"good-1"]


def test_a_mostly_valid_stream_keeps_running_and_commits_everything() -> None:
    values = [b"bad" if index % 150 == 3 else b"good" for index in range(3000)]
    worker = Worker(values, DEFAULT_DLQ_LIMIT)
    deadline = time.monotonic() + 10
    while worker.committed() < len(values):
        assert time.monotonic() < deadline, "the worker made no progress"
        worker.processor._run_once()
    assert worker.dead_letters() == [index for index in range(3000) if index % 150 == 3]
    worker.processor.signal_shutdown()
    worker.processor.run()


def test_arroyo_alone_drops_a_message_beyond_its_limit_and_goes_on() -> None:
    """Why the limit is never given to Arroyo's DLQ policy (docs/operations.md, DLQ limits)."""
    worker = Worker([b"good"] + [b"bad"] * 3 + [b"good"], DlqLimit(None, None))
    metrics = FleetMetrics(CollectorRegistry(), "arroyo")
    policy = build_dlq_policy(worker.broker.get_producer(), DLQ.name, "arroyo", metrics)
    limited = dataclasses.replace(policy, limit=DlqLimit(max_consecutive_count=1))
    consumer = worker.broker.get_consumer("arroyo")
    factory = ValidateFactory()
    processor = StreamProcessor(consumer, INPUT, factory, dlq_policy=limited)
    deadline = time.monotonic() + 10
    while consumer.tell().get(Partition(INPUT, 0), 0) < 5:
        assert time.monotonic() < deadline, "no progress"
        processor._run_once()
    processor.signal_shutdown()
    processor.run()
    # Only the first invalid message reached the DLQ; the two beyond the limit are gone.
    assert worker.dead_letters() == [1]
    assert factory.processed == [b"good", b"good"]
