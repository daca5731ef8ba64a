"""Blob-ingest metrics beyond the per-step ones (`workers_step_*` with steps `decode` and
`persist`): bytes through each stage, dedup hits, races."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from workers.blob_ingest.persist import PersistResult


class BlobIngestMetrics:
    def __init__(self, registry: CollectorRegistry, worker: str) -> None:
        self.bytes_in = Counter(
            "workers_blob_received_bytes_total",
            "Bytes of chunk messages received (as sent: compressed or raw).",
            ("worker",),
            registry=registry,
        ).labels(worker)
        self.decompressed_bytes = Counter(
            "workers_blob_decompressed_bytes_total",
            "Bytes of valid chunks after decompression.",
            ("worker",),
            registry=registry,
        ).labels(worker)
        dedup = Counter(
            "workers_blob_dedup_hits_total",
            "Chunks that needed no new object: seen earlier in the batch, or already stored.",
            ("worker", "kind"),
            registry=registry,
        )
        self.dedup_in_batch = dedup.labels(worker, "in_batch")
        self.dedup_already_stored = dedup.labels(worker, "already_stored")
        self.bytes_stored = Counter(
            "workers_blob_stored_bytes_total",
            "Bytes written to storage for new blobs (net of lost races).",
            ("worker",),
            registry=registry,
        ).labels(worker)
        self.blobs_created = Counter(
            "workers_blob_created_total",
            "New blob rows.",
            ("worker",),
            registry=registry,
        ).labels(worker)
        self.upload_races = Counter(
            "workers_blob_upload_races_total",
            "New chunks whose row another writer inserted first (object deleted, row adopted).",
            ("worker",),
            registry=registry,
        ).labels(worker)

    def record(self, result: PersistResult) -> None:
        self.dedup_in_batch.inc(result.duplicates_in_batch)
        self.dedup_already_stored.inc(result.already_stored)
        self.bytes_stored.inc(result.bytes_stored)
        self.blobs_created.inc(result.new_blobs)
        self.upload_races.inc(result.races)
