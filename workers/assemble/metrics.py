"""Assemble metrics beyond the per-step ones (`workers_step_*` with steps `decode`, `claim`,
`read`, `inspect` and `record`): files by kind and result, bytes read, seconds per file,
requests for finished files."""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram

#: Seconds per file: from a few milliseconds (a small file) to minutes (8 GiB).
FILE_SECONDS_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
KINDS: Final = ("dif", "artifact_bundle")
RESULTS: Final = ("ok", "error")


class AssembleMetrics:
    def __init__(self, registry: CollectorRegistry, worker: str) -> None:
        files = Counter(
            "workers_assemble_files_total",
            "Files assembled, by kind and result (ok or error).",
            ("worker", "kind", "result"),
            registry=registry,
        )
        self.files = {
            (kind, result): files.labels(worker, kind, result)
            for kind in KINDS
            for result in RESULTS
        }
        self.read_bytes = Counter(
            "workers_assemble_read_bytes_total",
            "Bytes of chunks read back from blob storage.",
            ("worker",),
            registry=registry,
        ).labels(worker)
        seconds = Histogram(
            "workers_assemble_file_duration_seconds",
            "Time to assemble one file, from its claim to its recorded state.",
            ("worker", "kind"),
            buckets=FILE_SECONDS_BUCKETS,
            registry=registry,
        )
        self.seconds = {kind: seconds.labels(worker, kind) for kind in KINDS}
        skipped = Counter(
            "workers_assemble_skipped_total",
            "Requests for files already finished (ok or error): no work done.",
            ("worker", "state"),
            registry=registry,
        )
        self.skipped = {result: skipped.labels(worker, result) for result in RESULTS}
        self.resumed = Counter(
            "workers_assemble_resumed_total",
            "Tasks found assembling, left by a worker that stopped mid-file, started again.",
            ("worker",),
            registry=registry,
        ).labels(worker)
