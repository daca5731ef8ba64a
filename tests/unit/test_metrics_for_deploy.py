"""Metrics the deploy rules need: `process_*` on /metrics (restarts) and committed offsets
(the stall alert)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from workers.common.metrics import ConsumerLagReporter, start_metrics_server
from workers.common.metrics.exposition import served_registry


def test_served_registry_adds_process_metrics_and_leaves_the_registry_alone() -> None:
    registry = CollectorRegistry()
    Counter("workers_example_total", "Example.", registry=registry).inc(3)
    served = {
        family.name: family
        for family in text_string_to_metric_families(
            generate_latest(served_registry(registry)).decode()
        )
    }
    assert served["workers_example"].samples[0].value == 3
    (start,) = served["process_start_time_seconds"].samples
    # This process started before now, and not before the machine booted.
    boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    assert boot - 1 <= start.value <= time.time()
    assert served["process_resident_memory_bytes"].samples[0].value > 0
    assert "process_start_time_seconds" not in generate_latest(registry).decode()
    # A second server on the same registry is fine (nothing was registered into it).
    served_registry(registry)


def test_lag_reporter_also_reports_committed_offsets() -> None:
    registry = CollectorRegistry()
    reporter = ConsumerLagReporter(registry, "billing", forward=None)

    def stats(partitions: dict[str, dict[str, object]]) -> str:
        return json.dumps({"topics": {"t": {"partitions": partitions}}})

    def offset(partition: str) -> float | None:
        labels = {"worker": "billing", "topic": "t", "partition": partition}
        return registry.get_sample_value("workers_consumer_committed_offset", labels)

    reporter(
        stats(
            {
                "0": {"partition": 0, "fetch_state": "active", "committed_offset": 120,
                      "consumer_lag": 5},
                "1": {"partition": 1, "fetch_state": "active", "committed_offset": -1001,
                      "consumer_lag": -1},
                "2": {"partition": 2, "fetch_state": "stopped", "committed_offset": 9,
                      "consumer_lag": 1},
                "-1": {"partition": -1, "committed_offset": 3},
            }
        )
    )  # fmt: skip
    assert (offset("0"), offset("1"), offset("2"), offset("-1")) == (120, None, None, None)
    # Partition 0 revoked, partition 1 committed for the first time.
    reporter(stats({"1": {"partition": 1, "fetch_state": "active", "committed_offset": 4}}))
    assert (offset("0"), offset("1")) == (None, 4)


def test_offsets_committed_in_transactions_drive_the_lag_and_committed_gauges() -> None:
    """The consumer never sees a transactional commit: the chain notes it for the gauges."""
    registry = CollectorRegistry()
    reporter = ConsumerLagReporter(registry, "billing", forward=None)

    def stats() -> str:
        # librdkafka still reports the offset the assignment started from (100).
        partition = {"partition": 0, "fetch_state": "active", "committed_offset": 100,
                     "ls_offset": 500, "consumer_lag": 400}  # fmt: skip
        return json.dumps({"topics": {"t": {"partitions": {"0": partition}}}})

    def sample(name: str) -> float | None:
        labels = {"worker": "billing", "topic": "t", "partition": "0"}
        return registry.get_sample_value(name, labels)

    reporter(stats())
    assert sample("workers_consumer_lag_messages") == 400
    reporter.note_committed({("t", 0): 450})
    reporter.note_committed({("t", 0): 430})  # an older note never moves it back
    reporter(stats())
    assert sample("workers_consumer_committed_offset") == 450
    assert sample("workers_consumer_lag_messages") == 50


def test_a_server_can_wait_for_one_more_scrape_before_its_process_exits() -> None:
    registry = CollectorRegistry()
    Counter("workers_example_total", "Example.", registry=registry).inc()
    server = start_metrics_server(0, registry, host="127.0.0.1")

    def scrape() -> str:
        with urllib.request.urlopen(server.url, timeout=5) as response:
            body: bytes = response.read()
            return body.decode()

    try:
        assert "workers_example_total 1.0" in scrape()
        # That scrape was answered before the wait began: it does not count.
        assert server.wait_for_next_scrape(0.05) is False
        waited: list[bool] = []
        waiter = threading.Thread(target=lambda: waited.append(server.wait_for_next_scrape(30)))
        waiter.start()
        deadline = time.monotonic() + 10
        while waiter.is_alive():  # Prometheus scraping every interval
            assert time.monotonic() < deadline, "the scrape did not end the wait"
            scrape()
            waiter.join(0.05)
        assert waited == [True]
    finally:
        server.shutdown()
