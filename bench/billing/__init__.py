"""Billing worker throughput end to end: real Kafka in and out, real PostgreSQL and Redis.

One input topic (4 partitions) holds `--messages` generic-metrics messages of a realistic mix
(`--mix production`: about 10 % usage counters, 2 % custom metrics for real projects, the
rest distributions, sets and gauges, 0.1 % malformed; `--mix demo`: 80 % usage counters).
Every variant reads all of it with its own consumer group, side by side in one run:

- `plain_decode`: the ceiling for consuming: a plain confluent-kafka loop, `consume()` in
  batches of 1000, decoding each value with the fleet's JSON library and schema (msgspec
  into `WireBucket`, what `parse_bucket` decodes first); produces nothing. Both plain loops
  use the fleet's librdkafka consumer tuning;
- `plain_billing`: the ceiling for the job: the same loop doing the billing work
  (`parse_bucket`, count, encode) and producing the outcomes with `produce_batch` and a
  delivery callback; no commits, no flags;
- `fleet`: today's chain (`BillingStrategyFactory`, first-custom-metric flags on, against the
  stack's PostgreSQL and Redis) on the fleet's consumer configuration, fed by `RunConsumer`
  (one Arroyo message per partition and fetch) as `workers run billing` is;
- `fleet_per_message`: the same chain fed by Arroyo's `KafkaConsumer`, one Arroyo message
  per Kafka message, each handed to the chain as a one-message run (`OneMessageRuns`): what
  `RunConsumer` saves;
- `fleet_aggregated`: the same with `--aggregate-window-ms 200`;
- `arroyo_stock`: the issue's variant (b), the same chain on Arroyo's stock consumer and
  its stock configuration: Arroyo's `KafkaConsumer` (one message per poll) configured by
  `build_kafka_consumer_configuration`'s defaults (`queued.min.messages=10000`, librdkafka's
  `fetch.queue.backoff.ms=1000`; docs/reference.md, Arroyo and librdkafka), each message
  handed to the chain as a
  one-message run (`OneMessageRuns`, the chain takes runs only), i.e. what dropping the
  fleet's strategy factory into a stock Arroyo consumer gives;
- `fleet_stock_config`: the same chain fed by the fleet's `RunConsumer`, on that stock
  configuration: what the configuration alone costs. With batched consumption it is a timer,
  not CPU: once a partition holds `queued.min.messages` librdkafka waits
  `fetch.queue.backoff.ms` (1 s) before fetching it again, so this variant gets at most
  about partitions x 10,000 messages per 1 s wait whatever the chain does (24,000-31,000
  msg/s measured on 4 partitions), and a short run measures how many of those waits it
  happened to straddle (use 200,000 messages or more);
- `quix_streams`: the peer, the same billing job written as a Quix Streams app
  (`bench/quix_billing_app.py`, in its own virtualenv `bench/.venv-quix` made on demand by
  `bench/quix_env.py`: Quix pins confluent-kafka < 2.13). The fleet's own decode,
  validation, counting and outcome bytes (`bench/quix_billing.py` composes the pure-Python
  modules of `workers.billing`), no flags written (custom-metric projects are
  only spotted), invalid messages dropped; the fleet's librdkafka tuning, commit interval
  (1 s) and producer settings. Its clock runs from the first message to the end of the
  checkpoint after the last one (outcomes acknowledged, offsets committed), measured in the
  app; its outcome topic is read back and must hold exactly the expected outcomes;
- `fleet_exactly_once`: `fleet` in exactly-once mode (`ExactlyOnce`, as `workers run billing
  --processing-guarantee exactly-once` builds it): outcomes and input offsets committed in
  one Kafka transaction per `--transaction-interval-ms` (default the worker's, 250 ms; a
  list such as `50,100,250` runs `fleet_exactly_once_50ms`, ... side by side). Its clock
  stops when the offsets committed in transactions cover the input (Arroyo's commit is
  never called in this mode; see `fleet_exactly_once`). Reports transactions committed and
  aborted, the mean transaction size and the p99 from first produce to commit (a histogram
  bucket bound) from the chain's own metrics; its outcomes are read back (read committed).
  A run pays fixed costs a long-running worker does not: its first commit is slower (the
  outcome topic's metadata, first partition registrations), and the last transaction commits
  only when its interval is over (on average half an interval after the last message). On
  100,000 messages (well under a second) that favours short intervals: compare intervals on
  1,000,000 messages or more;
- `quix_streams_exactly_once`: the Quix peer with `processing_guarantee="exactly-once"`.

Every outcome topic read back is read with `isolation.level=read_committed` to the end of
each partition (not to its high watermark: transaction markers take offsets too).

Arroyo variants run an in-process `StreamProcessor` (like `bench.consumer_throughput`); the
clock runs from the first message the chain sees to the moment the offsets of all messages
are released for commit, i.e. every outcome acknowledged and every flag durable. Plain loops
run from the first message to the last acknowledgement. Before each flag-enabled run the
projects' flags, their analytics events and Redis keys are reset, so every run sets them.

Prints a table, writes a bar chart (`bench/results/billing.png`) and, as the last line, one
JSON object with the figures. After the table: the issue's ratios against their targets
(`fleet_exactly_once / fleet` >= 0.8, `/ quix_streams_exactly_once` >= 2, `fleet /
plain_billing` >= 0.85) and the exactly-once transactions. `--profile` runs the `fleet`
variant under cProfile and prints where the time goes. `--revision REV` compares with an
older chain: it also runs the `fleet` variant as of git revision REV (`bench/revision.py`:
`git archive` into a temporary directory, run there on the same stack), shown as
`fleet@REV`. Usage: `python -m bench.billing [--messages N] [--mix production|demo]
[--repeat N] [--transaction-interval-ms MS[,MS...]] [--profile] [--revision REV]` (needs
`workers stack up` and `workers migrate`).

The modules, one concept each: `workload` (the input, its expected outcomes, the flags'
reset and the cleanup), `plain` (the plain loops), `chain` (today's chain in Arroyo's
`StreamProcessor`: `Stopwatch`, `run_arroyo`, the stock configuration, `OneMessageRuns`),
`exactly_once` (`fleet_exactly_once` and its transactions), `quix` (the Quix Streams peer),
`verify` (reading an outcomes topic back), `summary` (table, ratios, chart) and `__main__`
(the options and the runs).
"""
