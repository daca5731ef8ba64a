"""`RunOptions` as `workers run NAME` builds them when no option is given."""

from __future__ import annotations

from workers.common.registry import ConsumerDefinition
from workers.common.runner import RunOptions


def default_run_options(definition: ConsumerDefinition) -> RunOptions:
    return RunOptions(
        input_topic=definition.topic,
        consumer_group=definition.consumer_group,
        max_batch_size=definition.max_batch_size,
        max_batch_time_ms=definition.max_batch_time_ms,
    )
