"""The billing worker's exactly-once series, read back from the Prometheus exposition."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from workers.billing.metrics import (
    ABORT_COMMIT_ERROR,
    ABORT_PRODUCE_ERROR,
    ABORT_REASONS,
    ABORT_REVOKED,
    BillingMetrics,
)

WORKER = "billing-eu"  # not the default, so the `worker` label is seen to follow it

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def exposition(registry: CollectorRegistry) -> tuple[dict[str, str], Samples]:
    """(family name → type, (sample name, labels) → value) as a scrape would read them."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        ours = family.name.startswith(("workers_billing_transaction", "workers_billing_producer"))
        # `*_created` (creation timestamps) comes out as gauges of its own: not ours to check.
        if ours and not family.name.endswith("_created"):
            types[family.name] = family.type
            for sample in family.samples:
                samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return types, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset({"worker": WORKER, **labels}.items())))


def buckets(samples: Samples, name: str) -> dict[str, float]:
    return {
        dict(labels)["le"]: v
        for (sample, labels), v in samples.items()
        if sample == f"{name}_bucket" and dict(labels)["worker"] == WORKER
    }


@pytest.fixture
def metrics(registry: CollectorRegistry) -> BillingMetrics:
    return BillingMetrics(registry, WORKER)


def test_every_transaction_series_is_exported_at_zero_from_the_start(
    registry: CollectorRegistry, metrics: BillingMetrics
) -> None:
    types, samples = exposition(registry)
    # Family names as the parser reports them (counters without `_total`).
    assert types == {
        "workers_billing_transactions_committed": "counter",
        "workers_billing_transactions_aborted": "counter",
        "workers_billing_producer_fenced": "counter",
        "workers_billing_transaction_commit_seconds": "histogram",
        "workers_billing_transaction_open_seconds": "histogram",
        "workers_billing_transaction_size_messages": "histogram",
    }
    assert value(samples, "workers_billing_transactions_committed_total") == 0
    assert value(samples, "workers_billing_producer_fenced_total") == 0
    aborted = {
        dict(labels)["reason"]: v
        for (name, labels), v in samples.items()
        if name == "workers_billing_transactions_aborted_total"
    }
    assert aborted == {"produce_error": 0, "commit_error": 0, "revoked": 0}
    for histogram in (
        "workers_billing_transaction_commit_seconds",
        "workers_billing_transaction_open_seconds",
        "workers_billing_transaction_size_messages",
    ):
        assert value(samples, f"{histogram}_count") == 0, histogram
    assert ABORT_REASONS == (ABORT_PRODUCE_ERROR, ABORT_COMMIT_ERROR, ABORT_REVOKED)


def test_histogram_buckets_span_the_documented_ranges(
    registry: CollectorRegistry, metrics: BillingMetrics
) -> None:
    _, samples = exposition(registry)
    commit = list(buckets(samples, "workers_billing_transaction_commit_seconds"))
    open_time = list(buckets(samples, "workers_billing_transaction_open_seconds"))
    size = list(buckets(samples, "workers_billing_transaction_size_messages"))
    assert (commit[0], commit[-2:]) == ("0.001", ["30.0", "+Inf"])
    assert (open_time[0], open_time[-2:]) == ("0.005", ["60.0", "+Inf"])
    assert size == [
        "1.0", "3.0", "10.0", "30.0", "100.0", "300.0", "1000.0", "3000.0", "10000.0",
        "30000.0", "100000.0", "+Inf",
    ]  # fmt: skip


def test_committed_transactions_are_counted_and_observed(
    registry: CollectorRegistry, metrics: BillingMetrics
) -> None:
    metrics.transaction_committed(commit_seconds=0.004, open_seconds=0.2, outcomes=120)
    metrics.transaction_committed(commit_seconds=2.0, open_seconds=12.0, outcomes=3)
    _, samples = exposition(registry)
    assert value(samples, "workers_billing_transactions_committed_total") == 2

    commit = buckets(samples, "workers_billing_transaction_commit_seconds")
    assert (commit["0.0025"], commit["0.005"], commit["1.0"], commit["2.5"]) == (0, 1, 1, 2)
    assert value(samples, "workers_billing_transaction_commit_seconds_sum") == pytest.approx(2.004)
    assert value(samples, "workers_billing_transaction_commit_seconds_count") == 2

    open_time = buckets(samples, "workers_billing_transaction_open_seconds")
    assert (open_time["0.1"], open_time["0.25"], open_time["10.0"], open_time["30.0"]) == (
        0,
        1,
        1,
        2,
    )
    assert value(samples, "workers_billing_transaction_open_seconds_sum") == pytest.approx(12.2)

    size = buckets(samples, "workers_billing_transaction_size_messages")
    assert (size["1.0"], size["3.0"], size["100.0"], size["300.0"], size["+Inf"]) == (
        0,
        1,
        1,
        2,
        2,
    )
    assert value(samples, "workers_billing_transaction_size_messages_sum") == 123
    # Committing records no abort.
    assert value(samples, "workers_billing_transactions_aborted_total", reason="revoked") == 0


def test_aborts_are_counted_by_reason(registry: CollectorRegistry, metrics: BillingMetrics) -> None:
    metrics.transaction_aborted(ABORT_PRODUCE_ERROR)
    metrics.transaction_aborted(ABORT_PRODUCE_ERROR)
    metrics.transaction_aborted(ABORT_REVOKED)
    _, samples = exposition(registry)

    def aborted(reason: str) -> float | None:
        return value(samples, "workers_billing_transactions_aborted_total", reason=reason)

    assert (aborted("produce_error"), aborted("commit_error"), aborted("revoked")) == (2, 0, 1)
    assert value(samples, "workers_billing_transactions_committed_total") == 0


@pytest.mark.parametrize("reason", ["timeout", "", "Produce_Error", "produce_error "])
def test_an_unknown_abort_reason_raises_and_adds_no_series(
    registry: CollectorRegistry, metrics: BillingMetrics, reason: str
) -> None:
    with pytest.raises(ValueError, match="unknown abort reason"):
        metrics.transaction_aborted(reason)
    _, samples = exposition(registry)
    aborted = {
        dict(labels)["reason"]: v
        for (name, labels), v in samples.items()
        if name == "workers_billing_transactions_aborted_total"
    }
    assert aborted == dict.fromkeys(ABORT_REASONS, 0)


def test_fenced_producers_are_counted(registry: CollectorRegistry, metrics: BillingMetrics) -> None:
    metrics.producer_fenced()
    _, samples = exposition(registry)
    assert value(samples, "workers_billing_producer_fenced_total") == 1
    assert value(samples, "workers_billing_transactions_committed_total") == 0
