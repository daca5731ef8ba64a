"""The served registry adds the serving process's `process_*` metrics (restart detection)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

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
