"""Reading a process's Prometheus /metrics: the whole text, or one metric's total."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our http://127.0.0.1
        body: bytes = response.read()
        return body


def scrape(port: int) -> str:
    return get(f"http://127.0.0.1:{port}/metrics").decode()


def metric_total(metrics_text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    found = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                found += sample.value
    return found
