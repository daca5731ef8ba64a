"""Reading an outcomes topic back: exactly the expected outcomes, in the exact shape."""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any, Final

import orjson

from bench.billing.workload import Workload
from workers.common.kafka_offsets import committed_records

_OUTCOME_KEYS: Final = [
    "timestamp",
    "org_id",
    "project_id",
    "key_id",
    "outcome",
    "reason",
    "event_id",
    "category",
    "quantity",
]


def verify_outcomes(
    work: Workload, topic: str, expected: Mapping[tuple[int, int, int, int], int]
) -> None:
    """Read `topic` to its end: exactly the expected outcomes, keyless, in the exact shape
    of docs/reference.md, Billing outcomes.

    Reads committed data only, to the end of each partition (`committed_records`): nothing of
    an aborted transaction, and not counted by offsets, which transaction markers also take.
    """
    seen: collections.Counter[Any] = collections.Counter()
    timeout = 60 + work.messages / 10_000
    for message in committed_records(work.settings, topic, timeout=timeout):
        assert message.key() is None, message.key()
        value = message.value() or b""
        outcome = orjson.loads(value)
        assert list(outcome) == _OUTCOME_KEYS, value
        assert b" " not in value, value
        assert outcome["outcome"] == 0, value
        seen[
            (outcome["org_id"], outcome["project_id"], outcome["category"], outcome["quantity"])
        ] += 1
    wanted = collections.Counter(expected)
    assert seen == wanted, (
        f"{topic}: {sum((seen - wanted).values())} unexpected outcomes, "
        f"{sum((wanted - seen).values())} missing"
    )
