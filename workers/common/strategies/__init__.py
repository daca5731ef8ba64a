"""Arroyo processing strategies of our own, where Arroyo's would lose an offset's ordering:
`OrderedBatchStep`, `RunTaskInPool` and `TwoStagePipeline` (docs/blob-ingest.md, Chain)."""

from workers.common.strategies.ordered_batch import OrderedBatchStep
from workers.common.strategies.run_task_in_pool import RunTaskInPool
from workers.common.strategies.two_stage import TwoStagePipeline

__all__ = ["OrderedBatchStep", "RunTaskInPool", "TwoStagePipeline"]
