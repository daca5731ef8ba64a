"""The first-custom-metric flag path without the stores: MRIs, detection, the writer thread."""

from __future__ import annotations

import threading
from collections.abc import Collection

import pytest
from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError as RedisConnectionError

from harness.waiting import wait_for
from workers.billing.custom_metrics import CustomMetricDetector, Mri, parse_mri
from workers.billing.flags import (
    FlagCheck,
    FlagStoreError,
    FlagWriter,
    KnownProjects,
    ProjectKey,
    flag_cache_key,
)
from workers.billing.metrics import BillingMetrics
from workers.common.backoff import Backoff
from workers.demo.billing import outcome_totals


def test_flag_cache_key_is_the_references() -> None:
    assert flag_cache_key(1, 3) == "has-custom-metrics-flag-updated:1:3"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("c:custom/clicks@none", Mri("c", "custom", "clicks", "none")),
        ("d:spans/duration@millisecond", Mri("d", "spans", "duration", "millisecond")),
        ("c:custom/a.b_c@x@y", Mri("c", "custom", "a.b_c", "x@y")),
        ("c:a:custom/x@none", Mri("c", "a:custom", "x", "none")),  # not the custom namespace
        ("custom/clicks@none", None),
        ("c:custom/clicks", None),
        ("c:custom/@none", None),
        ("", None),
    ],
)
def test_parse_mri(text: str, expected: Mri | None) -> None:
    assert parse_mri(text) == expected


def test_the_detector_resolves_the_name_in_every_inner_map() -> None:
    detector = CustomMetricDetector()
    meta = {"c": "not a map", "h": {"5": "environment"}, "f": {"77": "c:custom/x@none"}}
    assert detector.is_custom(meta, 77)  # found in the last inner map
    assert not detector.is_custom(meta, 5)  # "environment" is no MRI
    assert not detector.is_custom(meta, 6)  # no name at all
    assert not detector.is_custom({}, 77)
    # The first string wins; a non-string entry is skipped.
    first = {"a": {"77": 3}, "b": {"77": "c:spans/x@none"}, "c": {"77": "c:custom/x@none"}}
    assert not detector.is_custom(first, 77)
    assert detector.is_custom({"a": {"77": 3}, "c": {"77": "c:custom/x@none"}}, 77)


@pytest.mark.parametrize(
    ("meta", "metric_id", "custom"),
    [
        ({"c": {"9": "c:custom/clicks@none"}}, 9, True),
        ({"h": {"1": "env"}, "r": {"9": "d:custom/latency@millisecond"}}, 9, True),
        ({"c": {"9": "c:transactions/usage@none"}}, 9, False),
        ({"c": {"9": "c:customer/x@none"}}, 9, False),
        ({"c": {"9": "c:Custom/x@none"}}, 9, False),
        ({"c": {"8": "c:custom/x@none"}}, 9, False),
        ({"c": {"9": 17}}, 9, False),
        ({}, 9, False),
    ],
)
def test_detector(meta: dict[str, object], metric_id: int, custom: bool) -> None:
    detector = CustomMetricDetector()
    assert detector.is_custom(meta, metric_id) is custom
    assert detector.is_custom(meta, metric_id) is custom  # cached verdict, same answer


def test_detector_caches_are_bounded() -> None:
    detector = CustomMetricDetector(max_names=4)
    for metric_id in range(20):
        meta = {"c": {str(metric_id): f"c:custom/m{metric_id}@none"}}
        assert detector.is_custom(meta, metric_id)
    assert len(detector._verdicts) <= 4
    assert len(detector._id_texts) <= 4


def test_known_projects_are_bounded() -> None:
    known = KnownProjects(capacity=3)
    known.add_all([(1, 1), (1, 2), (1, 3)])
    assert (1, 2) in known
    known.add_all([(1, 4)])
    assert len(known) <= 3
    assert (1, 4) in known


class ScriptedStore:
    """Fails `failures` rounds, then flags whatever exists; records every round."""

    def __init__(self, existing: set[ProjectKey], failures: int = 0) -> None:
        self.existing = existing
        self.failures = failures
        self.rounds: list[set[ProjectKey]] = []
        self.closed = False

    def check_and_flag(self, candidates: Collection[ProjectKey]) -> FlagCheck:
        self.rounds.append(set(candidates))
        if self.failures:
            self.failures -= 1
            raise FlagStoreError("postgres", OSError("connection refused"))
        check = FlagCheck()
        for key in candidates:
            (check.flagged if key in self.existing else check.missing).add(key)
        return check

    def close(self) -> None:
        self.closed = True


def test_writer_retries_until_the_round_succeeds() -> None:
    registry = CollectorRegistry()
    store = ScriptedStore({(1, 1)}, failures=2)
    writer = FlagWriter(
        lambda: store, metrics=BillingMetrics(registry), backoff=Backoff(0.001, 0.004)
    )
    job = writer.submit(frozenset({(1, 1), (1, 2)}))
    assert writer.pending == 1
    wait_for(lambda: job.done, 5, "the job")
    assert len(store.rounds) == 3
    assert (1, 1) in writer.known
    assert (1, 2) not in writer.known
    assert writer.pending == 0
    assert (
        registry.get_sample_value(
            "workers_billing_flag_errors_total", {"worker": "billing", "store": "postgres"}
        )
        == 2
    )
    assert (
        registry.get_sample_value(
            "workers_billing_custom_metric_checks_total",
            {"worker": "billing", "result": "missing_project"},
        )
        == 1
    )

    # A known project costs no round; a missing one is remembered for a while.
    again = writer.submit(frozenset({(1, 1), (1, 2)}))
    wait_for(lambda: again.done, 5, "the second job")
    assert len(store.rounds) == 3
    writer.close(5)
    assert store.closed


def test_writer_close_stops_retrying_and_leaves_the_job_not_done() -> None:
    store = ScriptedStore({(1, 1)}, failures=10**6)
    writer = FlagWriter(
        lambda: store, metrics=BillingMetrics(CollectorRegistry()), backoff=Backoff(0.01, 0.01)
    )
    job = writer.submit(frozenset({(1, 1)}))
    wait_for(lambda: len(store.rounds) >= 2, 5, "a few failed rounds")
    writer.close(5)
    assert not job.done
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(frozenset({(1, 1)}))


def test_writer_survives_raw_store_errors() -> None:
    calls: list[int] = []
    gate = threading.Event()

    class Flaky(ScriptedStore):
        def check_and_flag(self, candidates: Collection[ProjectKey]) -> FlagCheck:
            calls.append(1)
            if len(calls) == 1:
                raise RedisConnectionError("redis went away")
            gate.set()
            return super().check_and_flag(candidates)

    writer = FlagWriter(
        lambda: Flaky({(3, 3)}),
        metrics=BillingMetrics(CollectorRegistry()),
        backoff=Backoff(0.001, 0.001),
    )
    job = writer.submit(frozenset({(3, 3)}))
    wait_for(lambda: job.done, 5, "the job")
    assert gate.is_set()
    writer.close(5)


def test_an_empty_job_is_done_at_once() -> None:
    writer = FlagWriter(lambda: ScriptedStore(set()), metrics=BillingMetrics(CollectorRegistry()))
    assert writer.submit(frozenset()).done
    writer.close(1)


def test_outcome_totals_from_a_scrape() -> None:
    text = """
# TYPE workers_billing_outcomes_total counter
workers_billing_outcomes_total{category="transaction",worker="billing"} 3.0
workers_billing_outcomes_total{category="span",worker="billing"} 2.0
workers_billing_outcomes_total{category="span",worker="other"} 50.0
# TYPE workers_billing_outcome_quantity_total counter
workers_billing_outcome_quantity_total{category="transaction",worker="billing"} 21.0
workers_billing_outcome_quantity_total{category="span",worker="billing"} 1e+30
"""
    totals = outcome_totals(text)
    assert list(totals) == ["span", "transaction"]
    assert (totals["transaction"].outcomes, totals["transaction"].quantity) == (3, 21)
    assert totals["span"].outcomes == 2
    assert totals["span"].quantity == round(1e30)
    assert outcome_totals("") == {}
