"""Invalid messages of a run: copied to the DLQ with a reason, committed past once acknowledged."""

from __future__ import annotations

from arroyo.backends.kafka import KafkaPayload
from arroyo.backends.local.backend import LocalBroker
from confluent_kafka import KafkaError
from prometheus_client import CollectorRegistry

from tests.support.billing_fakes import (
    BILLABLE,
    DLQ,
    INPUT,
    INVALID,
    NOT_BILLABLE,
    CommitLog,
    FakeProducer,
    Translator,
    bucket,
    dlq_messages,
    make_factory,
    outcomes,
    poll_for,
    run,
    settle,
)


def test_each_invalid_message_becomes_a_dead_letter_with_its_reason() -> None:
    translator = Translator()
    batch = translator.batch([BILLABLE, INVALID, bucket("x"), NOT_BILLABLE])
    assert [letter.reason for letter in batch.dead_letters] == [
        "invalid_json: payload is not valid JSON",
        "non_numeric_counter: counter value is string, not a number",
    ]
    assert [letter.message.offset() for letter in batch.dead_letters] == [1, 2]
    assert {letter.partition.index for letter in batch.dead_letters} == {0}
    assert batch.messages == 4
    assert len(batch.payloads) == 1


def test_an_invalid_message_is_committed_past_after_its_copy_is_acknowledged(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = FakeProducer(broker, auto=False)
    commits = CommitLog()
    factory = make_factory(producer, registry, max_batch_messages=10, dlq_topic=DLQ.name)
    strategy = factory.create_with_partitions(commits, {})
    strategy.submit(run([BILLABLE], 0))
    strategy.submit(run([INVALID], 1))
    poll_for(strategy)
    assert commits.at() is None  # neither the outcome nor the DLQ copy is acknowledged
    producer.auto = True
    settle(strategy, lambda: commits.at() == 2)
    strategy.close()
    strategy.join(1.0)
    [copy] = dlq_messages(broker)
    assert dict(copy.headers)["reason"] == b"invalid_json: payload is not valid JSON"
    invalid = registry.get_sample_value(
        "workers_step_messages_invalid_total",
        {"worker": "billing", "step": "decode", "reason": "invalid_json"},
    )
    assert invalid == 1.0


def test_a_run_dead_letters_its_invalid_messages_and_commits_after_their_delivery(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = FakeProducer(broker, auto=False)
    commits = CommitLog()
    factory = make_factory(producer, registry, max_batch_messages=100, dlq_topic=DLQ.name)
    strategy = factory.create_with_partitions(commits, {})

    strategy.submit(run([BILLABLE, INVALID, NOT_BILLABLE, BILLABLE], 10))
    poll_for(strategy)
    assert commits.at() is None
    assert len(producer.pending) == 3  # two outcomes and one DLQ copy

    dlq_index = next(i for i, entry in enumerate(producer.pending) if entry[1] == DLQ.name)
    producer.deliver(dlq_index)
    producer.deliver(0)
    poll_for(strategy)
    assert commits.at() is None  # one outcome still unacknowledged
    producer.deliver(0)
    settle(strategy, lambda: commits.at() == 14)

    [copy] = dlq_messages(broker)
    assert copy.value == INVALID
    headers = dict(copy.headers)
    assert headers["reason"] == b"invalid_json: payload is not valid JSON"
    assert headers["original_offset"] == b"11"
    assert headers["original_partition"] == b"0"
    assert headers["original_topic"] == INPUT.name.encode()
    assert len(outcomes(broker)) == 2
    dlq_total = registry.get_sample_value(
        "workers_dlq_messages_total", {"worker": "billing", "reason": "invalid_json"}
    )
    assert dlq_total == 1.0


def test_the_outcomes_wait_for_the_dead_letter_too(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = FakeProducer(broker, auto=False)
    commits = CommitLog()
    factory = make_factory(producer, registry, max_batch_messages=100, dlq_topic=DLQ.name)
    strategy = factory.create_with_partitions(commits, {})
    strategy.submit(run([BILLABLE, INVALID], 0))
    poll_for(strategy)
    outcome_index = next(i for i, entry in enumerate(producer.pending) if entry[1] != DLQ.name)
    producer.deliver(outcome_index)
    poll_for(strategy)
    assert commits.at() is None  # the DLQ copy is not acknowledged yet
    producer.deliver(0)
    settle(strategy, lambda: commits.at() == 2)


def test_a_failed_dead_letter_is_produced_again_before_the_commit(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = FakeProducer(broker, auto=False)
    commits = CommitLog()
    factory = make_factory(producer, registry, max_batch_messages=100, dlq_topic=DLQ.name)
    strategy = factory.create_with_partitions(commits, {})
    strategy.submit(run([INVALID], 0))
    poll_for(strategy)
    producer.fail(0, KafkaError._MSG_TIMED_OUT)
    poll_for(strategy)
    assert commits.at() is None
    producer.auto = True
    settle(strategy, lambda: commits.at() == 1)
    assert [copy.value for copy in dlq_messages(broker)] == [INVALID]


def test_without_a_dlq_topic_invalid_messages_of_a_run_are_skipped_and_committed_past(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = FakeProducer(broker)
    commits = CommitLog()
    strategy = make_factory(producer, registry).create_with_partitions(commits, {})
    strategy.submit(run([INVALID, BILLABLE], 0))
    settle(strategy, lambda: commits.at() == 2)
    assert dlq_messages(broker) == []
    assert len(outcomes(broker)) == 1
