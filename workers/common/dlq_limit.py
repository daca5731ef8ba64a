"""DLQ limits: a worker stops when its invalid messages go beyond `--dlq-max-invalid-ratio` or
`--dlq-max-consecutive-invalid` (docs/operations.md, DLQ limits).

The limits are Arroyo's `DlqLimit`, counted by Arroyo's `DlqLimitState` per partition since
the partition was assigned: the ratio is invalid messages over the valid ones between them
(as Arroyo counts gaps), a run is invalid messages at consecutive offsets. It differs from
Arroyo's own use of them in two ways:

- Arroyo's `StreamProcessor` (2.48) catches the error its DLQ policy raises beyond a limit
  ("Dlq limit exceeded") and drops the message: its offset is committed past and the worker
  goes on. So the limit is never given to Arroyo's DLQ policy; the chain counts the invalid
  messages itself (`workers.common.dlq_limit_strategy` for chains that raise
  `InvalidMessage`, `workers.billing.limit_dead_letters` for billing's runs) and raises
  `DlqLimitExceeded`, which ends the processor before that message's offset is committed.
- Arroyo starts a partition at zero valid messages, so the first invalid message after an
  assignment or a restart is over any ratio (a division by zero), and so is a lone invalid
  message among a partition's first hundred: a single poison message would stop the worker
  after every restart. Here a partition starts as if its last `ASSUMED_VALID_MESSAGES`
  messages had been valid, so at 0.01 up to 10 invalid messages right after an assignment
  are dead-lettered, and a stream of nothing but invalid messages stops at the 11th.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from arroyo.dlq import DlqLimit, DlqLimitState
from arroyo.types import BrokerValue, Partition

from workers.common.metrics import FleetMetrics
from workers.common.metrics.step_metrics import (
    DLQ_LIMIT_CONSECUTIVE_INVALID,
    DLQ_LIMIT_INVALID_RATIO,
)

logger = logging.getLogger(__name__)

DEFAULT_DLQ_MAX_INVALID_RATIO: Final = 0.01
DEFAULT_DLQ_MAX_CONSECUTIVE_INVALID: Final = 1000
#: Sentry's limits for its consumers.
DEFAULT_DLQ_LIMIT: Final = DlqLimit(
    max_invalid_ratio=DEFAULT_DLQ_MAX_INVALID_RATIO,
    max_consecutive_count=DEFAULT_DLQ_MAX_CONSECUTIVE_INVALID,
)
#: Valid messages a partition is credited with when it is assigned (see the module doc).
ASSUMED_VALID_MESSAGES: Final = 1000
#: Invalid messages named in the error that stops the worker.
LAST_INVALID_SHOWN: Final = 5
MAX_REASON_CHARS: Final = 200

_RATIO_OPTION: Final = "--dlq-max-invalid-ratio"
_CONSECUTIVE_OPTION: Final = "--dlq-max-consecutive-invalid"
# `DlqLimitState` reads only the partition and offset of a message.
_NO_TIMESTAMP: Final = datetime.fromtimestamp(0, UTC)


def limits_enforced(limit: DlqLimit) -> bool:
    return limit.max_invalid_ratio is not None or limit.max_consecutive_count is not None


@dataclass(frozen=True)
class InvalidSeen:
    """One invalid message counted against the limits: where it was and why it is invalid."""

    partition: Partition
    offset: int
    reason: str

    def __str__(self) -> str:
        partition = self.partition
        return f"{partition.topic.name}[{partition.index}] offset {self.offset}: {self.reason}"


class DlqLimitExceeded(Exception):
    """Invalid messages went beyond a DLQ limit: the worker stops without committing
    `offset` of `partition` (or anything after it)."""

    def __init__(
        self,
        worker: str,
        limit: str,
        detail: str,
        partition: Partition,
        offset: int,
        last_invalid: Sequence[InvalidSeen],
    ) -> None:
        super().__init__(worker, limit, detail, partition, offset)
        self.worker = worker
        # The metric label: `max_invalid_ratio` or `max_consecutive_invalid`.
        self.limit = limit
        self.detail = detail
        self.partition = partition
        self.offset = offset
        self.last_invalid = tuple(last_invalid)

    def __str__(self) -> str:
        where = f"{self.partition.topic.name}[{self.partition.index}] offset {self.offset}"
        lines = [
            f"{self.worker} stopped: DLQ limit exceeded at {where}: {self.detail}.",
            f"Nothing from that offset on was committed. Remove the cause (see the reasons), "
            f"or raise the limit ({_RATIO_OPTION}, {_CONSECUTIVE_OPTION}), and start it again.",
            f"Last {len(self.last_invalid)} invalid message(s):",
            *(f"  {seen}" for seen in self.last_invalid),
        ]
        return "\n".join(lines)


class _Counts(dict[Partition, int]):
    """A count per partition that `DlqLimitState` keeps by reference: it replaces a mapping
    that is false (an empty dict) by a new one, which this never is."""

    def __bool__(self) -> bool:
        return True


class DlqLimiter:
    """Counts one process's invalid messages against its `DlqLimit`, per assigned partition.

    `reset(assignment)` on every assignment (and on every rewind to committed offsets);
    `record(...)` for every invalid message, in offset order per partition, before it is
    dead-lettered: it raises `DlqLimitExceeded` when the message goes beyond a limit.
    """

    def __init__(self, limit: DlqLimit, worker: str, metrics: FleetMetrics) -> None:
        self.__limit = limit
        self.__worker = worker
        self.__metrics = metrics
        self.__last: deque[InvalidSeen] = deque(maxlen=LAST_INVALID_SHOWN)
        self.reset({})

    def reset(self, assignment: Mapping[Partition, int]) -> None:
        """Start counting afresh from `assignment`'s offsets (the next message to read)."""
        self.__last.clear()
        self.__valid = _Counts()
        self.__invalid = _Counts()
        self.__consecutive = _Counts()
        # As Arroyo's `KafkaDlqProducer` does, the message before the assignment counts as
        # the last invalid one, so a run of invalid messages from the start is consecutive.
        self.__last_invalid_offsets = _Counts()
        for partition, offset in assignment.items():
            self.__start(partition, offset)
        self.__state = DlqLimitState(
            self.__limit,
            valid_messages=self.__valid,
            invalid_messages=self.__invalid,
            invalid_consecutive_messages=self.__consecutive,
            last_invalid_offsets=self.__last_invalid_offsets,
        )

    def __start(self, partition: Partition, offset: int) -> None:
        self.__valid[partition] = ASSUMED_VALID_MESSAGES
        self.__last_invalid_offsets[partition] = offset - 1

    def record(self, partition: Partition, offset: int, reason: str | None) -> None:
        """Count one invalid message; `DlqLimitExceeded` when it is beyond a limit."""
        if partition not in self.__last_invalid_offsets:
            self.__start(partition, offset)
        text = (reason or "unspecified")[:MAX_REASON_CHARS]
        self.__last.append(InvalidSeen(partition, offset, text))
        if self.__state.record_invalid_message(BrokerValue(None, partition, offset, _NO_TIMESTAMP)):
            return
        exceeded = self.__exceeded(partition, offset)
        self.__metrics.dlq_limit_exceeded(exceeded.limit)
        logger.error(
            "DLQ limit exceeded; stopping",
            extra={
                "worker": self.__worker,
                "limit": exceeded.limit,
                "detail": exceeded.detail,
                "topic": partition.topic.name,
                "partition": partition.index,
                "offset": offset,
                "last_invalid": [str(seen) for seen in exceeded.last_invalid],
            },
        )
        raise exceeded

    def __exceeded(self, partition: Partition, offset: int) -> DlqLimitExceeded:
        """Which limit `DlqLimitState` refused the message for (it checks the ratio first)."""
        invalid = self.__invalid.get(partition, 0)
        valid = self.__valid.get(partition, 0)
        ratio_limit = self.__limit.max_invalid_ratio
        if ratio_limit is not None and (valid == 0 or invalid / valid > ratio_limit):
            observed = f"{invalid / valid:.4g}" if valid else "unbounded"
            limit = DLQ_LIMIT_INVALID_RATIO
            detail = (
                f"{_RATIO_OPTION} {ratio_limit:g}: {invalid} invalid for {valid} valid "
                f"messages (ratio {observed}) since the partition was assigned "
                f"({ASSUMED_VALID_MESSAGES} valid ones assumed at the assignment)"
            )
        else:
            limit = DLQ_LIMIT_CONSECUTIVE_INVALID
            detail = (
                f"{_CONSECUTIVE_OPTION} {self.__limit.max_consecutive_count}: "
                f"{self.__consecutive.get(partition, 0)} invalid messages in a row"
            )
        return DlqLimitExceeded(self.__worker, limit, detail, partition, offset, tuple(self.__last))
