"""The billing worker: generic-metrics usage counters in, accepted outcomes out (docs/billing.md).

Modules:

- `message`: decode and validate one `snuba-generic-metrics` message (`parse_bucket`);
- `counting`: which metric ids bill, in which data category, for what quantity;
- `outcome`: the exact bytes of an accepted outcome (`OutcomeEncoder`);
- `flags`: the first-custom-metric flag and its analytics event (`FlagWriter`);
- `metrics`: hot-path tallies and the worker's own Prometheus series;
- `strategy`: the Arroyo chain (`TranslateOutcomes → DeliverOutcomes → CommitOffsets`) and
  `BillingStrategyFactory`;
- `backoff`: exponential backoff for retries;
- `summary`: outcome totals from a metrics scrape, flagged projects from PostgreSQL;
- `traffic`: realistic sample input for demos and benchmarks;
- `definition`: the registry entry `BILLING_CONSUMER`.
"""
