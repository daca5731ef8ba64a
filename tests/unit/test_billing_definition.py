"""The billing registry entry, its worker options and its sample traffic."""

from __future__ import annotations

import dataclasses
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import click
import orjson
import pytest
from prometheus_client import CollectorRegistry

from tests.support.billing_fakes import expected_outcome
from workers.billing.counting import BillingCounter
from workers.billing.definition import (
    BILLING_CONSUMER,
    CLICK_OPTIONS,
    DEFAULT_TRANSACTION_INTERVAL_MS,
    build_strategy_factory,
    sample_traffic,
    transactional_id,
    transactional_id_prefix,
    transactional_producer_overrides,
)
from workers.billing.factory import BillingStrategyFactory
from workers.billing.message import BucketError, parse_bucket
from workers.billing.transactional_ids import claim_transactional_id
from workers.common.kafka_config import ConsumerOptions, consumer_configuration
from workers.common.message_runs import RunConsumer
from workers.common.metrics import FleetMetrics
from workers.common.registry import StrategyContext
from workers.common.settings import Settings


def test_definition() -> None:
    d = BILLING_CONSUMER
    assert d.name == "billing"
    assert d.topic == "snuba-generic-metrics"
    assert d.dlq_topic == "snuba-generic-metrics-dlq"
    assert d.consumer_group == "billing-metrics-consumer"
    assert list(d.output_topics) == ["outcomes-billing"]
    assert dict(d.topic_config) == {"compression.type": "lz4", "max.message.bytes": "10000000"}
    assert d.sample_traffic is sample_traffic
    assert (d.max_batch_size, d.max_batch_time_ms) == (5000, 20)
    assert d.build_strategy_factory is build_strategy_factory


def _parse(*args: str) -> dict[str, Any]:
    command = click.Command("billing", params=list(CLICK_OPTIONS), callback=lambda **kw: kw)
    parsed: dict[str, Any] = command.main(args=list(args), standalone_mode=False)
    return parsed


def test_worker_options() -> None:
    assert _parse() == {
        "outcomes_topic": "outcomes-billing",
        "billable_metric": None,
        "max_pending_outcomes": 50_000,
        "aggregate_window_ms": 0,
        "custom_metric_flags": True,
        "processing_guarantee": "exactly-once",
        "transaction_interval_ms": DEFAULT_TRANSACTION_INTERVAL_MS,
        "transaction_timeout_ms": 6_000,
        "transactional_id": None,
    }
    parsed = _parse(
        "--outcomes-topic",
        "outcomes-test",
        "--billable-metric",
        "42=span",
        "--billable-metric",
        "43=2",
        "--max-pending-outcomes",
        "5",
        "--aggregate-window-ms",
        "250",
        "--no-custom-metric-flags",
        "--processing-guarantee",
        "at-least-once",
        "--transaction-interval-ms",
        "40",
        "--transaction-timeout-ms",
        "5000",
        "--transactional-id",
        "billing-a",
    )
    assert parsed == {
        "outcomes_topic": "outcomes-test",
        "billable_metric": {42: 12, 43: 2},
        "max_pending_outcomes": 5,
        "aggregate_window_ms": 250,
        "custom_metric_flags": False,
        "processing_guarantee": "at-least-once",
        "transaction_interval_ms": 40,
        "transaction_timeout_ms": 5000,
        "transactional_id": "billing-a",
    }
    with pytest.raises(click.BadParameter):
        _parse("--billable-metric", "nonsense")


def test_the_processing_guarantee_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORKERS_BILLING_PROCESSING_GUARANTEE", "at-least-once")
    assert _parse()["processing_guarantee"] == "at-least-once"
    assert _parse("--processing-guarantee", "exactly-once")["processing_guarantee"] == (
        "exactly-once"
    )
    monkeypatch.setenv("WORKERS_BILLING_PROCESSING_GUARANTEE", "sometimes")
    with pytest.raises(click.BadParameter):
        _parse()


def _context(consumer: Any = None, **options: Any) -> StrategyContext:
    options.setdefault("processing_guarantee", "at-least-once")
    return StrategyContext(
        worker="billing",
        settings=Settings(),
        input_topic="snuba-generic-metrics",
        max_batch_size=1000,
        max_batch_time_ms=1000,
        metrics=FleetMetrics(CollectorRegistry(), "billing"),
        options=options,
        consumer_group="billing-metrics-consumer",
        consumer=consumer,
    )


def test_exactly_once_needs_the_run_consumer_and_a_timeout_above_the_interval() -> None:
    with pytest.raises(click.UsageError, match="run consumer"):
        build_strategy_factory(_context(processing_guarantee="exactly-once"))
    consumer = RunConsumer(
        consumer_configuration(
            Settings(kafka_bootstrap_servers="127.0.0.1:1"), ConsumerOptions("g")
        )
    )
    try:
        with pytest.raises(click.UsageError, match="must exceed --transaction-interval-ms"):
            build_strategy_factory(
                _context(
                    consumer,
                    processing_guarantee="exactly-once",
                    transaction_interval_ms=2000,
                    transaction_timeout_ms=2000,
                )
            )
        factory = build_strategy_factory(_context(consumer, processing_guarantee="exactly-once"))
        assert factory.exactly_once
        factory.shutdown()  # no producer was built: nothing to close, no network
        assert not build_strategy_factory(_context(consumer)).exactly_once
    finally:
        consumer.close()


def test_the_transactional_id_is_stable_per_member_and_unique_per_local_process(
    tmp_path: Path,
) -> None:
    context = _context()
    host = socket.gethostname()
    assert transactional_id_prefix(context) == f"billing-billing-metrics-consumer-{host}"
    member = dataclasses.replace(context, group_instance_id="billing-7", process_index=2)
    assert transactional_id_prefix(member) == "billing-billing-metrics-consumer-billing-7"
    # An explicit prefix is used as given, process index appended, with no local claim.
    given = dataclasses.replace(context, options={"transactional_id": "tx"}, process_index=1)
    assert transactional_id(given).transactional_id == "tx-1"
    # Derived ids are claimed: a second live process on the host gets the next number, and
    # a process that died (its lock released) leaves its id to the next one that starts.
    first = claim_transactional_id("p", 0, tmp_path)
    second = claim_transactional_id("p", 0, tmp_path)
    assert (first.transactional_id, second.transactional_id) == ("p-0", "p-1")
    first.release()
    assert claim_transactional_id("p", 0, tmp_path).transactional_id == "p-0"
    assert claim_transactional_id("p", 5, tmp_path).transactional_id == "p-5"
    overrides = transactional_producer_overrides("tx-1", 30_000)
    assert overrides == {
        "transactional.id": "tx-1",
        "transaction.timeout.ms": 30_000,
        "message.timeout.ms": 30_000,
    }


def test_aggregation_and_flags_options_reach_the_factory() -> None:
    aggregating = build_strategy_factory(_context(aggregate_window_ms=250))
    assert aggregating.aggregate_window_seconds == 0.25
    assert aggregating.flag_writer is not None  # on by default
    plain = build_strategy_factory(_context(custom_metric_flags=False))
    assert plain.aggregate_window_seconds is None
    assert plain.flag_writer is None
    for factory in (aggregating, plain):
        factory.shutdown()  # nothing was started: no thread, no connection


def test_build_strategy_factory_uses_the_options_and_connects_lazily() -> None:
    factory = build_strategy_factory(
        _context(outcomes_topic="outcomes-x", billable_metric={7: 12}, max_pending_outcomes=3)
    )
    assert isinstance(factory, BillingStrategyFactory)
    assert factory.outcomes_topic.name == "outcomes-x"
    assert factory.counter.categories == {7: 12}
    factory.shutdown()  # no producer was built: nothing to close, no network

    defaults = build_strategy_factory(_context())
    assert defaults.outcomes_topic.name == "outcomes-billing"
    assert defaults.counter.categories == BillingCounter().categories
    strings = build_strategy_factory(_context(billable_metric=("9=transaction",)))
    assert strings.counter.categories == {9: 2}
    json_keys = build_strategy_factory(_context(billable_metric={"9": "12"}))
    assert json_keys.counter.categories == {9: 12}


def test_sample_traffic_is_deterministic_and_realistic() -> None:
    traffic = sample_traffic(5000, 42)
    assert len(traffic) == 5000
    assert [p.value for p in traffic] == [p.value for p in sample_traffic(5000, 42)]
    assert [p.value for p in traffic] != [p.value for p in sample_traffic(5000, 43)]
    assert all(p.key is None for p in traffic)

    kinds: Counter[str] = Counter()
    orgs: set[int] = set()
    for payload in traffic:
        try:
            bucket = parse_bucket(payload.value)
        except BucketError as error:
            kinds[f"invalid:{error.code}"] += 1
            kinds["invalid"] += 1
            continue
        value = orjson.loads(payload.value)["value"]
        if isinstance(value, dict):
            kinds[f"{bucket.type}:{value.get('format', 'gauge')}"] += 1
        else:
            kinds[f"{bucket.type}:{type(value).__name__}"] += 1
        outcome = expected_outcome(payload.value)
        if outcome is not None:
            org_id, _, category, _ = outcome
            kinds[f"category:{category}"] += 1
            orgs.add(org_id)
    assert 10 <= kinds["invalid"] <= 50  # about 0.5 %
    assert len([k for k in kinds if k.startswith("invalid:")]) >= 5
    assert kinds["category:2"] + kinds["category:12"] > 3500  # mostly billable
    assert kinds["category:2"] > 0
    assert kinds["category:12"] > 0
    assert 2 <= len(orgs) <= 10
    for kind in ("d:list", "d:array", "d:base64", "d:zstd", "s:list", "s:array", "s:base64"):
        assert kinds[kind] > 0, kind
    assert kinds["s:zstd"] > 0
    assert kinds["g:gauge"] > 0
    unpadded = [
        p
        for p in traffic
        if b'"format":"base64"' in p.value
        and not p.value.split(b'"data":"')[1].split(b'"')[0].endswith(b"=")
    ]
    assert unpadded
