"""The Quix Streams peer: `bench/quix_billing_app.py` run in its own virtualenv, verified.

The app and its per-message work (`bench/quix_billing.py`) stay outside this package: they
run in the Quix virtualenv (`bench/quix_env.py`), where only the pure-Python modules of
`workers.billing` import.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from typing import Any, Final

import orjson

from bench.billing.chain import fleet_consumer_config
from bench.billing.verify import verify_outcomes
from bench.billing.workload import CUSTOM_PROJECTS, Workload
from bench.quix_env import REPO_ROOT, ensure_quix_venv
from harness.kafka import unique_name
from workers.billing.definition import OUTCOMES_PRODUCER_OVERRIDES
from workers.common.kafka_config import DEFAULT_COMMIT_INTERVAL_MS, producer_configuration

# Keys Quix sets itself (group, offsets, commits, statistics) or that are Arroyo's own.
_QUIX_OWNED_KEYS: Final = frozenset(
    {
        "bootstrap.servers",
        "group.id",
        "auto.offset.reset",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "statistics.interval.ms",
        "stats_cb",
        "log_level",
    }
)


def _librdkafka_extras(config: Mapping[str, Any]) -> dict[str, Any]:
    """The fleet's librdkafka tuning, for Quix's `*_extra_config` (JSON scalars only)."""
    return {
        key: value
        for key, value in config.items()
        if key not in _QUIX_OWNED_KEYS
        and not key.startswith("arroyo.")
        and isinstance(value, str | int | float | bool)
    }


#: The last Quix run's own report (its JSON line) per variant, for the final figures.
quix_reports: dict[str, dict[str, Any]] = {}

QUIX_GUARANTEES: Final[Mapping[str, str]] = {
    "quix_streams": "at-least-once",
    "quix_streams_exactly_once": "exactly-once",
}


def quix_streams(work: Workload, outcomes_topic: str, variant: str = "quix_streams") -> float:
    """Run the Quix Streams app in its virtualenv over the input; verify what it produced.

    `quix_streams_exactly_once` passes `--processing-guarantee exactly-once` (Quix's
    `Application(processing_guarantee="exactly-once")`): one Kafka transaction per
    checkpoint, i.e. per commit interval (the same 1 s as at-least-once; Quix flushes its
    producer at each checkpoint, so a longer interval favours it).
    """
    python = ensure_quix_venv()
    settings = work.settings
    consumer_extras = _librdkafka_extras(fleet_consumer_config(settings))
    producer_extras = _librdkafka_extras(
        producer_configuration(settings, "bench-quix", OUTCOMES_PRODUCER_OVERRIDES)
    )
    command = [
        str(python),
        "-m",
        "bench.quix_billing_app",
        "--broker",
        settings.kafka_bootstrap_servers,
        "--input-topic",
        work.topic,
        "--output-topic",
        outcomes_topic,
        "--group",
        unique_name("bench-bill-quix"),
        "--messages",
        str(work.messages),
        "--commit-interval",
        str(DEFAULT_COMMIT_INTERVAL_MS / 1000.0),
        "--consumer-config",
        orjson.dumps(consumer_extras).decode(),
        "--producer-config",
        orjson.dumps(producer_extras).decode(),
        "--processing-guarantee",
        QUIX_GUARANTEES[variant],
    ]
    finished = subprocess.run(
        command,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        check=True,
        timeout=120 + work.messages / 1000,
    )
    lines = [line for line in finished.stdout.splitlines() if line.startswith(b"{")]
    assert lines, f"the Quix app printed no report: {finished.stdout[-2000:]!r}"
    app_report: dict[str, Any] = orjson.loads(lines[-1])
    quix_reports[variant] = app_report
    assert app_report["messages"] == work.messages, app_report
    expected = work.expected
    assert app_report["outcomes"] == sum(expected.values()), (app_report, sum(expected.values()))
    assert app_report["custom_projects"] == CUSTOM_PROJECTS, app_report
    verify_outcomes(work, outcomes_topic, expected)
    return float(app_report["msg_per_s"])
