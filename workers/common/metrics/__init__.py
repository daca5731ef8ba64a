"""Prometheus metrics for the worker fleet.

Everything takes a `prometheus_client.CollectorRegistry`; nothing registers into the
client's global default registry. In a consumer process:

    registry = CollectorRegistry()
    configure_metrics(ArroyoPrometheusBackend(registry, worker), force=True)  # Arroyo's own
    fleet = FleetMetrics(registry, worker)            # fleet.step("decode").message_in() ...
    config["stats_cb"] = ConsumerLagReporter(registry, worker)   # after Arroyo's builder
    server = start_metrics_server(port, registry)     # GET /metrics; server.shutdown()

Create each of the three once per process and registry (a second one raises
`ValueError: Duplicated timeseries`). Every series carries a `worker` label.

Series
------
- Arroyo's ~68 metric names, as declared in `arroyo_metric_specs.ARROYO_METRICS` (name, type,
  unit, labels, help): `arroyo_*`, e.g. `arroyo_consumer_run_total`,
  `arroyo_consumer_poll_seconds_total` (the loop timers are counters of seconds),
  `arroyo_consumer_latency_seconds` (histogram), `arroyo_producer_librdkafka_p99_rtt_seconds`.
- Per step (`step_metrics`): `workers_step_messages_in_total`,
  `workers_step_messages_out_total`, `workers_step_messages_invalid_total{reason}`,
  `workers_step_latency_seconds`, `workers_batch_size_messages`; and
  `workers_dlq_messages_total{reason}`; `workers_dlq_limit_exceeded_total{limit}` (a process
  stopped beyond a DLQ limit). Reasons are short fixed codes (`[a-z0-9_]`, ≤ 64
  characters, at most 32 per step); anything else is counted as `reason="other"`.
- `workers_consumer_lag_messages{topic,partition}` (`lag`): librdkafka `consumer_lag`;
  `workers_consumer_committed_offset{topic,partition}`: librdkafka `committed_offset`.
- `process_*` (prometheus-client's process collector) of the process serving `/metrics`,
  added by `start_metrics_server`: `process_start_time_seconds` tells restarts apart.

Several consumer processes (`workers run NAME --processes N`)
-------------------------------------------------------------
prometheus-client keeps metric values in process memory, so N forked consumers need its
*multiprocess mode*: each process writes its values to memory-mapped files
(`<type>_<pid>.db`) in one directory and the parent, which serves `/metrics`, merges them.
The fleet does it like this:

1. Parent, at start: `prepare_multiprocess_dir(path)` creates the directory or deletes the
   previous run's `*.db` files (stale files from dead pids would otherwise be added in).
2. Parent: set `os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)`, then start the children
   with the `spawn` start method (a fresh interpreter that inherits the environment).
   prometheus-client chooses its value storage *once, when it is first imported*, from that
   variable; a `spawn` child imports it after the variable is set, so in the child the
   ordinary `Counter`/`Gauge`/`Histogram` classes (and so everything in this package) write
   to the files. A `fork` child would inherit the parent's in-memory mode: do not fork.
   `multiprocess_active()` tells a process which mode it is in.
3. Child: exactly what a single process does (registry, backend, `FleetMetrics`, lag
   reporter), but without a server; its registry is only a namespace.
4. Parent: `start_metrics_server(port, multiprocess_registry(path))`; the registry holds a
   `MultiProcessCollector` that reads every file at scrape time.
5. Parent, when a child exits: `mark_process_dead(pid, path)` deletes its *live* gauge files
   so a dead process's lag or queue sizes disappear. Its counters and histograms stay and
   keep counting in the sums, so `rate()` does not see a reset.

How values combine: counters and histograms are summed over processes (no `pid` label).
Every gauge declares a `multiprocess_mode`: `livesum` for things that add up over processes
(partition lag, queue sizes, buffered messages, pool sizes, broker states),
`livemax` where a sum would be wrong (librdkafka p99 latencies and idle times: the worst
process is shown). "live" means only processes still alive count.
Limits of the mode: series cannot be removed (the lag reporter sets a revoked partition to 0
instead), `_created` samples and exemplars are not exported, and two metric objects with the
same name and labels in one process would overwrite each other's file entry (hence one
`FleetMetrics` per process). With `--processes 1` none of this is used: the consumer runs in
the main process with an ordinary in-memory registry and serves it itself.
"""

from __future__ import annotations

from workers.common.metrics._common import (
    MAX_REASON_LENGTH,
    OTHER_REASON,
    multiprocess_active,
    sanitize_reason,
)
from workers.common.metrics.arroyo_backend import ArroyoPrometheusBackend
from workers.common.metrics.arroyo_metric_kinds import ArroyoMetricSpec, MetricKind
from workers.common.metrics.arroyo_metric_specs import ARROYO_METRICS, ARROYO_METRICS_BY_NAME
from workers.common.metrics.exposition import (
    MULTIPROC_DIR_ENV,
    MetricsServer,
    mark_process_dead,
    multiprocess_registry,
    prepare_multiprocess_dir,
    start_metrics_server,
)
from workers.common.metrics.lag import ConsumerLagReporter, partition_lags
from workers.common.metrics.step_metrics import FleetMetrics, StepMetrics

__all__ = [
    "ARROYO_METRICS",
    "ARROYO_METRICS_BY_NAME",
    "MAX_REASON_LENGTH",
    "MULTIPROC_DIR_ENV",
    "OTHER_REASON",
    "ArroyoMetricSpec",
    "ArroyoPrometheusBackend",
    "ConsumerLagReporter",
    "FleetMetrics",
    "MetricKind",
    "MetricsServer",
    "StepMetrics",
    "mark_process_dead",
    "multiprocess_active",
    "multiprocess_registry",
    "partition_lags",
    "prepare_multiprocess_dir",
    "sanitize_reason",
    "start_metrics_server",
]
