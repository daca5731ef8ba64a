"""Offset commits retried through a broker failover, and only through one."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
from arroyo.backends.kafka import KafkaConsumer, build_kafka_consumer_configuration
from arroyo.types import Partition, Topic
from confluent_kafka import KafkaError, KafkaException

from workers.common.backoff import Backoff
from workers.common.commit_retry import is_failover_error
from workers.common.fetching_consumer import FetchingConsumer, FetchingKafkaConsumer
from workers.common.message_runs import RunConsumer
from workers.common.retry_window import RetryWindow

COMMITTED = {Partition(Topic("t"), 0): 42}


def kafka_error(code: int) -> KafkaException:
    return KafkaException(KafkaError(code))


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (kafka_error(KafkaError._TIMED_OUT), True),
        (kafka_error(KafkaError._TRANSPORT), True),
        (kafka_error(KafkaError.COORDINATOR_NOT_AVAILABLE), True),
        (kafka_error(KafkaError.NOT_COORDINATOR), True),
        (kafka_error(KafkaError.UNKNOWN_MEMBER_ID), False),
        # The broker says: retry with the epoch the heartbeat brings (consumer protocol).
        (kafka_error(KafkaError.STALE_MEMBER_EPOCH), True),
        (kafka_error(KafkaError.FENCED_MEMBER_EPOCH), False),
        (kafka_error(KafkaError.ILLEGAL_GENERATION), False),
        (RuntimeError("not Kafka"), False),
    ],
)
def test_only_failover_errors_are_retried(error: BaseException, retried: bool) -> None:
    assert is_failover_error(error) is retried


class FlakyCommit:
    """Raises each of `errors` in turn, then returns the committed offsets."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self, consumer: object = None) -> Mapping[Partition, int]:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return COMMITTED


def quick_window(seconds: float = 60.0) -> RetryWindow:
    return RetryWindow(
        is_failover_error, seconds, "offset commit failed", lambda: Backoff(0.001, 0.002)
    )


def configuration() -> dict[str, Any]:
    return build_kafka_consumer_configuration(
        {},
        group_id="commit-retry-test",
        auto_offset_reset="earliest",
        bootstrap_servers=["127.0.0.1:9"],
    )


@pytest.fixture(params=[FetchingKafkaConsumer, RunConsumer])
def consumer(request: pytest.FixtureRequest) -> FetchingConsumer[Any]:
    # Never connects: commits go to the patched `KafkaConsumer.commit_offsets`, which the
    # fetching consumers (single messages and runs) wrap.
    consumer_class: Callable[..., FetchingConsumer[Any]] = request.param
    return consumer_class(configuration(), commit_window=quick_window())


def test_a_commit_timing_out_during_a_failover_is_tried_again(
    consumer: FetchingConsumer[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = FlakyCommit(
        kafka_error(KafkaError._TIMED_OUT), kafka_error(KafkaError.COORDINATOR_NOT_AVAILABLE)
    )
    monkeypatch.setattr(KafkaConsumer, "commit_offsets", commit)
    assert consumer.commit_offsets() == COMMITTED
    assert commit.calls == 3


def test_a_member_that_lost_its_partitions_is_not_retried(
    consumer: FetchingConsumer[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = FlakyCommit(kafka_error(KafkaError.UNKNOWN_MEMBER_ID))
    monkeypatch.setattr(KafkaConsumer, "commit_offsets", commit)
    with pytest.raises(KafkaException):
        consumer.commit_offsets()
    assert commit.calls == 1


def test_past_the_window_the_timeout_is_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    consumer = FetchingKafkaConsumer(configuration(), commit_window=quick_window(0.0))
    commit = FlakyCommit(*(kafka_error(KafkaError._TIMED_OUT) for _ in range(100)))
    monkeypatch.setattr(KafkaConsumer, "commit_offsets", commit)
    with pytest.raises(KafkaException):
        consumer.commit_offsets()
    assert commit.calls == 1
