"""The production registry: every worker `workers run` knows by name."""

from __future__ import annotations

from workers.common.registry import ConsumerRegistry

# Child processes (`--processes N`) rebuild the registry from this reference.
FLEET_REGISTRY_LOADER = "workers.fleet:build_registry"


def build_registry() -> ConsumerRegistry:
    from workers.billing.definition import BILLING_CONSUMER
    from workers.blob_ingest.definition import BLOB_INGEST_CONSUMER

    return ConsumerRegistry([BILLING_CONSUMER, BLOB_INGEST_CONSUMER])
