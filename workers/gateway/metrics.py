"""The gateway's Prometheus series (base units, `_total` counters, bounded labels).

- `workers_gateway_requests_total{route,method,status}` and
  `workers_gateway_request_duration_seconds{route,method}`: `route` is the route template
  (`/api/0/organizations/{org}/chunk-upload/`), never the raw path;
- `workers_gateway_chunks_accepted_total`, `workers_gateway_chunk_bytes_accepted_total`
  (decompressed bytes of chunks Kafka acknowledged);
- `workers_gateway_rejections_total{reason}`: short fixed codes (`too_many_chunks`,
  `chunk_too_large`, `corrupt_gzip`, `invalid_token`, `missing_scope`, `kafka_unavailable`...);
- `workers_gateway_auth_refusals_total{status,reason}`: every 401 and 403, by one of the
  fixed codes of `workers.gateway.auth.AUTH_REFUSALS` (all present from the start, at 0);
- `workers_gateway_produce_latency_seconds`: from the first produce of a request to the
  acknowledgement of its last chunk;
- `workers_gateway_assemble_total{kind,state}`: files answered by the assemble endpoints;
- `workers_gateway_assemble_enqueued_total{kind}`: files enqueued for the assemble worker
  (one per task row inserted or taken back, acknowledged by Kafka).
"""

from __future__ import annotations

from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from workers.common.metrics import sanitize_reason
from workers.common.metrics._common import DURATION_BUCKETS
from workers.gateway.auth import AUTH_REFUSALS, AuthRefused
from workers.gateway.upload_slots import UploadSlots


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "workers_gateway_requests_total",
            "HTTP requests answered, by route template, method and status.",
            ("route", "method", "status"),
            registry=registry,
        )
        self.request_duration = Histogram(
            "workers_gateway_request_duration_seconds",
            "Time to answer a request, by route template and method.",
            ("route", "method"),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.chunks_accepted = Counter(
            "workers_gateway_chunks_accepted_total",
            "Chunks acknowledged by Kafka and answered with 200.",
            registry=registry,
        )
        self.bytes_accepted = Counter(
            "workers_gateway_chunk_bytes_accepted_total",
            "Decompressed bytes of the accepted chunks.",
            registry=registry,
        )
        self.__rejections = Counter(
            "workers_gateway_rejections_total",
            "Requests refused, by reason code.",
            ("reason",),
            registry=registry,
        )
        self.__auth_refusals = Counter(
            "workers_gateway_auth_refusals_total",
            "Requests answered 401 or 403, by status and reason code.",
            ("status", "reason"),
            registry=registry,
        )
        for reason in AUTH_REFUSALS:
            self.__auth_refusals.labels(str(AuthRefused(reason).status), reason)
        self.produce_latency = Histogram(
            "workers_gateway_produce_latency_seconds",
            "From producing a request's chunks to Kafka's acknowledgement of all of them.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.__slots_in_use = Gauge(
            "workers_gateway_slots_in_use",
            "Requests holding a slot, by kind (upload: buffering chunks; assemble: answering).",
            ("kind",),
            registry=registry,
        )
        self.__slots_waiting = Gauge(
            "workers_gateway_slots_waiting",
            "Requests waiting for a slot, by kind (upload, assemble).",
            ("kind",),
            registry=registry,
        )
        self.__assemble = Counter(
            "workers_gateway_assemble_total",
            "Files answered by the assemble endpoints, by kind and state.",
            ("kind", "state"),
            registry=registry,
        )
        self.__enqueued = Counter(
            "workers_gateway_assemble_enqueued_total",
            "Files enqueued for the assemble worker, by kind.",
            ("kind",),
            registry=registry,
        )
        for kind in ("dif", "artifact_bundle"):
            self.__enqueued.labels(kind)

    def watch_slots(self, kind: Literal["upload", "assemble"], slots: UploadSlots) -> None:
        """Report the state of these slots at every scrape."""
        self.__slots_in_use.labels(kind).set_function(lambda: slots.in_use)
        self.__slots_waiting.labels(kind).set_function(lambda: slots.waiting)

    def rejected(self, reason: str) -> None:
        self.__rejections.labels(sanitize_reason(reason)).inc()

    def refused(self, refusal: AuthRefused) -> None:
        """Counts a 401/403 here and among all rejections."""
        self.__auth_refusals.labels(str(refusal.status), refusal.reason).inc()
        self.rejected(refusal.reason)

    def assembled(self, kind: str, state: str, *, enqueued: bool = False) -> None:
        self.__assemble.labels(kind, state).inc()
        if enqueued:
            self.__enqueued.labels(kind).inc()
