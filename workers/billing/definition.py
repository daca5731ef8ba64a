"""The billing worker's registry entry: `workers run billing`.

Worker options (after the shared ones):

- `--outcomes-topic TOPIC` (default `outcomes-billing`);
- `--billable-metric METRIC_ID=CATEGORY`, repeatable: replaces the default map
  (transactions → 2, spans → 12); a category is a number or `transaction` / `span`;
- `--max-pending-outcomes N`: outcomes waiting for their acknowledgement before the chain
  pushes back (`Produce(max_buffer_size=N)`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import click

from workers.billing.counting import parse_billable_metrics
from workers.billing.strategy import (
    DEFAULT_MAX_PENDING_OUTCOMES,
    DEFAULT_OUTCOMES_TOPIC,
    OUTCOMES_CLIENT_ID,
    BillingStrategyFactory,
    build_kafka_producer,
)
from workers.billing.traffic import sample_traffic
from workers.common.kafka_config import producer_configuration
from workers.common.registry import ConsumerDefinition, StrategyContext

INPUT_TOPIC: Final = "snuba-generic-metrics"
DLQ_TOPIC: Final = "snuba-generic-metrics-dlq"
CONSUMER_GROUP: Final = "billing-metrics-consumer"


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
)


def _billable_metrics(option: Any) -> dict[int, int] | None:
    """The `billable_metric` option: None, a parsed map or `METRIC_ID=CATEGORY` strings."""
    if not option:
        return None
    if isinstance(option, Mapping):
        return {int(metric_id): int(category) for metric_id, category in option.items()}
    return parse_billable_metrics(option)


def build_strategy_factory(context: StrategyContext) -> BillingStrategyFactory:
    options = context.options
    settings = context.settings
    return BillingStrategyFactory(
        producer_factory=lambda: build_kafka_producer(
            producer_configuration(settings, client_id=OUTCOMES_CLIENT_ID)
        ),
        metrics=context.metrics,
        outcomes_topic=options.get("outcomes_topic") or DEFAULT_OUTCOMES_TOPIC,
        billable_metrics=_billable_metrics(options.get("billable_metric")),
        max_pending_outcomes=int(
            options.get("max_pending_outcomes") or DEFAULT_MAX_PENDING_OUTCOMES
        ),
    )


BILLING_CONSUMER: Final = ConsumerDefinition(
    name="billing",
    description="Generic-metrics usage counters → accepted billing outcomes.",
    topic=INPUT_TOPIC,
    build_strategy_factory=build_strategy_factory,
    dlq_topic=DLQ_TOPIC,
    default_consumer_group=CONSUMER_GROUP,
    output_topics=(DEFAULT_OUTCOMES_TOPIC,),
    topic_config={"compression.type": "lz4", "max.message.bytes": "10000000"},
    click_options=CLICK_OPTIONS,
    sample_traffic=sample_traffic,
)

__all__ = ["BILLING_CONSUMER", "build_strategy_factory", "sample_traffic"]
