"""The production registry: every worker `workers run` knows by name, with its part in
`workers demo` (its hooks live in the demo package, with the rest of the demo's tooling)."""

from __future__ import annotations

from dataclasses import replace

from workers.common.registry import ConsumerRegistry

# Child processes (`--processes N`) rebuild the registry from this reference.
FLEET_REGISTRY_LOADER = "workers.fleet:build_registry"


def build_registry() -> ConsumerRegistry:
    from workers.assemble.definition import ASSEMBLE_CONSUMER
    from workers.billing.definition import BILLING_CONSUMER
    from workers.blob_ingest.definition import BLOB_INGEST_CONSUMER
    from workers.demo.assemble import ASSEMBLE_DEMO
    from workers.demo.billing import BILLING_DEMO
    from workers.demo.blob_ingest import BLOB_INGEST_DEMO

    return ConsumerRegistry(
        [
            replace(ASSEMBLE_CONSUMER, demo=ASSEMBLE_DEMO),
            replace(BILLING_CONSUMER, demo=BILLING_DEMO),
            replace(BLOB_INGEST_CONSUMER, demo=BLOB_INGEST_DEMO),
        ]
    )
