"""The billing worker's registry entry: `workers run billing`.

Worker options (after the shared ones):

- `--outcomes-topic TOPIC` (default `outcomes-billing`);
- `--billable-metric METRIC_ID=CATEGORY`, repeatable: replaces the default map
  (transactions → 2, spans → 12); a category is a number or `transaction` / `span`;
- `--max-pending-outcomes N`: outcomes handed to the producer and not yet acknowledged
  before the chain pushes back (default 50000);
- `--aggregate-window-ms MS`: sum quantities per (org, project, category) over windows of
  MS milliseconds of processing time and produce one outcome per sum (default 0 = off);
- `--custom-metric-flags/--no-custom-metric-flags`: the first-custom-metric flag and its
  analytics event (default on; needs PostgreSQL and Redis);
- `--processing-guarantee exactly-once|at-least-once` (or
  `WORKERS_BILLING_PROCESSING_GUARANTEE`; default exactly-once): outcomes, DLQ copies and
  input offsets in one Kafka transaction, or outcomes first and offsets after;
- `--transaction-interval-ms MS` (exactly-once): how long a transaction collects batches;
- `--transaction-timeout-ms MS` (exactly-once): the broker aborts a transaction open longer
  (librdkafka's `transaction.timeout.ms`; must exceed the interval);
- `--transactional-id PREFIX` (exactly-once): the producer's transactional id is
  `PREFIX-<process index>`; default `billing-<group>-<group instance id or host name>`.
  Keeping it across restarts lets the new process abort what the old one left open at once.

The shared `--max-batch-size` / `--max-batch-time-ms` close a batch of input messages
(defaults 5000 messages / 20 ms): one `produce_batch` call and one offset store per batch.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import click
from confluent_kafka import Producer
from redis import Redis

from workers.billing.counting import parse_billable_metrics
from workers.billing.deliver import DEFAULT_MAX_PENDING_OUTCOMES
from workers.billing.factory import (
    DEFAULT_OUTCOMES_TOPIC,
    OUTCOMES_CLIENT_ID,
    BillingStrategyFactory,
)
from workers.billing.flags import DEFAULT_CONNECT_TIMEOUT_SECONDS, ProjectFlagStore
from workers.billing.metrics import BillingMetrics
from workers.billing.traffic import sample_traffic
from workers.billing.transactional_ids import TransactionalIdClaim, claim_transactional_id
from workers.billing.transactions import DEFAULT_TRANSACTION_INTERVAL_SECONDS, ExactlyOnce
from workers.billing.translate import DEFAULT_MAX_BATCH_MESSAGES, DEFAULT_MAX_BATCH_SECONDS
from workers.common.kafka_config import producer_configuration
from workers.common.message_runs import RunConsumer
from workers.common.registry import ConsumerDefinition, StrategyContext
from workers.common.settings import Settings

logger = logging.getLogger(__name__)

INPUT_TOPIC: Final = "snuba-generic-metrics"
DLQ_TOPIC: Final = "snuba-generic-metrics-dlq"
CONSUMER_GROUP: Final = "billing-metrics-consumer"
#: Outcomes are small and many: fewer, larger produce requests cost the broker less.
OUTCOMES_PRODUCER_OVERRIDES: Final[Mapping[str, Any]] = {"linger.ms": 5}
EXACTLY_ONCE: Final = "exactly-once"
AT_LEAST_ONCE: Final = "at-least-once"
PROCESSING_GUARANTEE_ENV: Final = "WORKERS_BILLING_PROCESSING_GUARANTEE"
DEFAULT_TRANSACTION_INTERVAL_MS: Final = round(DEFAULT_TRANSACTION_INTERVAL_SECONDS * 1000)
#: 24 intervals. A member killed mid-transaction leaves its offsets pending: whoever takes its
#: partitions waits until the broker aborts that transaction, so this bounds the kill -9
#: pause with the session timeout (both 6 s; docs/rebalancing.md).
DEFAULT_TRANSACTION_TIMEOUT_MS: Final = 6_000


def _parse_billable_metric_option(
    ctx: click.Context, param: click.Parameter, value: Sequence[str]
) -> dict[int, int] | None:
    if not value:
        return None
    try:
        return parse_billable_metrics(value)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx=ctx, param=param) from None


CLICK_OPTIONS: Final = (
    click.Option(
        ["--outcomes-topic"],
        default=DEFAULT_OUTCOMES_TOPIC,
        show_default=True,
        help="Topic the accepted outcomes are produced to.",
    ),
    click.Option(
        ["--billable-metric"],
        multiple=True,
        metavar="METRIC_ID=CATEGORY",
        callback=_parse_billable_metric_option,
        help="Bill this metric id in this data category; repeatable, replaces the defaults "
        "(9223372036854775945=transaction, 9223372036854776226=span).",
    ),
    click.Option(
        ["--max-pending-outcomes"],
        type=click.IntRange(min=1),
        default=DEFAULT_MAX_PENDING_OUTCOMES,
        show_default=True,
        help="Outcomes awaiting Kafka's acknowledgement before the consumer pushes back.",
    ),
    click.Option(
        ["--aggregate-window-ms"],
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        help="Sum quantities per (org, project, category) over windows of this many ms and "
        "produce one outcome per sum; 0 = one outcome per billable bucket.",
    ),
    click.Option(
        ["--custom-metric-flags/--no-custom-metric-flags"],
        default=True,
        show_default=True,
        help="Set the first-custom-metric project flag and record its analytics event.",
    ),
    click.Option(
        ["--processing-guarantee"],
        type=click.Choice([EXACTLY_ONCE, AT_LEAST_ONCE]),
        default=EXACTLY_ONCE,
        envvar=PROCESSING_GUARANTEE_ENV,
        show_default=True,
        help="exactly-once: outcomes, DLQ copies and offsets in one Kafka transaction; "
        "at-least-once: offsets committed after the outcomes are acknowledged.",
    ),
    click.Option(
        ["--transaction-interval-ms"],
        type=click.IntRange(min=1),
        default=DEFAULT_TRANSACTION_INTERVAL_MS,
        show_default=True,
        help="exactly-once: how long one transaction collects batches before its commit.",
    ),
    click.Option(
        ["--transaction-timeout-ms"],
        type=click.IntRange(min=1000),
        default=DEFAULT_TRANSACTION_TIMEOUT_MS,
        show_default=True,
        help="exactly-once: the broker aborts a transaction open longer than this.",
    ),
    click.Option(
        ["--transactional-id"],
        metavar="PREFIX",
        help="exactly-once: transactional id prefix (PREFIX-<process index>); default "
        "billing-<group>-<group instance id or host name>.",
    ),
)


def _billable_metrics(option: Any) -> dict[int, int] | None:
    """The `billable_metric` option: None, a parsed map or `METRIC_ID=CATEGORY` strings."""
    if not option:
        return None
    if isinstance(option, Mapping):
        return {int(metric_id): int(category) for metric_id, category in option.items()}
    return parse_billable_metrics(option)


def build_outcomes_producer(
    settings: Settings, overrides: Mapping[str, Any] | None = None
) -> Producer:
    """confluent-kafka's producer with the fleet's settings (acks=all, idempotent, lz4)."""
    return Producer(
        producer_configuration(
            settings,
            client_id=OUTCOMES_CLIENT_ID,
            overrides={**OUTCOMES_PRODUCER_OVERRIDES, **(overrides or {})},
        )
    )


def flag_store_factory(settings: Settings) -> Callable[[BillingMetrics], ProjectFlagStore]:
    """Builds the flag store (its own Redis client, a lazy PostgreSQL connection)."""

    def build(metrics: BillingMetrics) -> ProjectFlagStore:
        redis: Redis = Redis.from_url(
            settings.redis_url,
            socket_timeout=DEFAULT_CONNECT_TIMEOUT_SECONDS,
            socket_connect_timeout=DEFAULT_CONNECT_TIMEOUT_SECONDS,
        )
        return ProjectFlagStore(settings.database_url, redis, metrics=metrics)

    return build


def transactional_id_prefix(context: StrategyContext) -> str:
    """The prefix of the outcomes producer's transactional id (docs/billing.md)."""
    given = context.options.get("transactional_id")
    if given:
        return str(given)
    member = context.group_instance_id or socket.gethostname()
    return f"{context.worker}-{context.consumer_group or 'default'}-{member}"


def transactional_id(context: StrategyContext) -> TransactionalIdClaim:
    """This process's transactional id (an explicit prefix as given, else claimed locally)."""
    prefix = transactional_id_prefix(context)
    if context.options.get("transactional_id"):
        return TransactionalIdClaim(f"{prefix}-{context.process_index}", None)
    return claim_transactional_id(prefix, context.process_index)


def transactional_producer_overrides(
    transactional_id: str, transaction_timeout_ms: int
) -> dict[str, Any]:
    return {
        "transactional.id": transactional_id,
        "transaction.timeout.ms": transaction_timeout_ms,
        # A delivery may not outlive its transaction.
        "message.timeout.ms": transaction_timeout_ms,
    }


def exactly_once_mode(context: StrategyContext) -> ExactlyOnce:
    options = context.options
    interval_ms = int(options.get("transaction_interval_ms") or DEFAULT_TRANSACTION_INTERVAL_MS)
    timeout_ms = int(options.get("transaction_timeout_ms") or DEFAULT_TRANSACTION_TIMEOUT_MS)
    if timeout_ms <= interval_ms:
        raise click.UsageError(
            f"--transaction-timeout-ms ({timeout_ms}) must exceed --transaction-interval-ms "
            f"({interval_ms}), or the broker aborts transactions before they are committed"
        )
    if not isinstance(context.consumer, RunConsumer):
        raise click.UsageError("exactly-once billing needs the run consumer (consumes_runs)")
    settings = context.settings
    claims: list[TransactionalIdClaim] = []

    def build_producer() -> Producer:
        # Claimed when the producer is built (first assignment), held for the process's life.
        claim = transactional_id(context)
        claims.append(claim)
        logger.info("transactional id", extra={"transactional_id": claim.transactional_id})
        overrides = transactional_producer_overrides(claim.transactional_id, timeout_ms)
        return build_outcomes_producer(settings, overrides)

    return ExactlyOnce(
        producer_factory=build_producer,
        consumer=context.consumer,
        transaction_interval_seconds=interval_ms / 1000.0,
        note_committed=context.note_committed,
    )


def build_strategy_factory(context: StrategyContext) -> BillingStrategyFactory:
    options = context.options
    settings = context.settings
    window_ms = int(options.get("aggregate_window_ms") or 0)
    flags = options.get("custom_metric_flags", True)
    exactly_once = options.get("processing_guarantee", EXACTLY_ONCE) == EXACTLY_ONCE
    return BillingStrategyFactory(
        producer_factory=None if exactly_once else lambda: build_outcomes_producer(settings),
        exactly_once=exactly_once_mode(context) if exactly_once else None,
        metrics=context.metrics,
        flag_store_factory=flag_store_factory(settings) if flags else None,
        outcomes_topic=options.get("outcomes_topic") or DEFAULT_OUTCOMES_TOPIC,
        billable_metrics=_billable_metrics(options.get("billable_metric")),
        max_pending_outcomes=int(
            options.get("max_pending_outcomes") or DEFAULT_MAX_PENDING_OUTCOMES
        ),
        max_batch_messages=context.max_batch_size,
        max_batch_seconds=context.max_batch_time_seconds,
        aggregate_window_seconds=window_ms / 1000.0 if window_ms else None,
        dlq_topic=context.dlq_topic,
        dlq_limiter=context.dlq_limiter,
        worker=context.worker,
    )


BILLING_CONSUMER: Final = ConsumerDefinition(
    name="billing",
    description="Generic-metrics usage counters → accepted billing outcomes.",
    topic=INPUT_TOPIC,
    build_strategy_factory=build_strategy_factory,
    dlq_topic=DLQ_TOPIC,
    default_consumer_group=CONSUMER_GROUP,
    max_batch_size=DEFAULT_MAX_BATCH_MESSAGES,
    max_batch_time_ms=round(DEFAULT_MAX_BATCH_SECONDS * 1000),
    output_topics=(DEFAULT_OUTCOMES_TOPIC,),
    topic_config={"compression.type": "lz4", "max.message.bytes": "10000000"},
    click_options=CLICK_OPTIONS,
    sample_traffic=sample_traffic,
    consumes_runs=True,
)

__all__ = ["BILLING_CONSUMER", "build_strategy_factory", "sample_traffic"]
