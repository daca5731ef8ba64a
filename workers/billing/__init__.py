"""The billing worker: generic-metrics usage counters in, accepted outcomes out (SPEC §4).

Modules:

- `message`: decode and validate one `snuba-generic-metrics` message (`parse_bucket`);
- `counting`: which metric ids bill, in which data category, for what quantity;
- `outcome`: the exact bytes of an accepted outcome (`OutcomeEncoder`);
- `metrics`: hot-path tallies flushed into the fleet's per-step metrics;
- `strategy`: the Arroyo chain and `BillingStrategyFactory`;
- `traffic`: realistic sample input for demos (`sample_traffic`);
- `definition`: the registry entry `BILLING_CONSUMER`.
"""
