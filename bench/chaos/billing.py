"""Billing under a fault: one stream of usage buckets (`streams.BillingStream`) read by two
groups, one billing worker each, exactly-once and at-least-once, into outcome topics of their
own; both flag the same projects (the first-custom-metric flag).

Verdicts: per guarantee, outcomes per bucket (lost: a bucket without an outcome; duplicates:
outcomes beyond one, allowed at-least-once only), and the flags (lost: a project that got a
custom bucket but has no flag bit or no `first_custom_metric.sent` event; duplicates: events
beyond one per project).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Final

import orjson
import psycopg

from bench.chaos.offsets import Watched
from bench.chaos.processes import Fleet
from bench.chaos.stack import create_stream_topics
from bench.chaos.streams import BillingStream, create_org_with_projects
from bench.chaos.workload import Verdict, WorkerOptions
from harness.billing import CUSTOM_METRIC_ID
from harness.kafka import unique_name
from harness.paced import PacedProducer
from harness.worker_process import WorkerProcess
from workers.billing.definition import AT_LEAST_ONCE, EXACTLY_ONCE
from workers.billing.flags import FIRST_CUSTOM_METRIC_EVENT
from workers.common.kafka_offsets import committed_records
from workers.common.projects import HAS_CUSTOM_METRICS_FLAG

GUARANTEES: Final = (EXACTLY_ONCE, AT_LEAST_ONCE)
READ_TIMEOUT_SECONDS: Final = 180.0


class BillingWorkload:
    def __init__(
        self, options: WorkerOptions, per_second: int, max_seconds: float, custom_every: int
    ) -> None:
        self.__options = options
        self.__per_second = per_second
        settings = options.stack.settings
        self.__input = unique_name("chaos-billing")
        self.__outcomes = {g: unique_name(f"chaos-outcomes-{g}") for g in GUARANTEES}
        create_stream_topics(options.stack, self.__input, *self.__outcomes.values())
        length = int(per_second * max_seconds)
        self.__org, projects = create_org_with_projects(settings, math.ceil(length / custom_every))
        self.__stream = BillingStream(length, self.__org, projects, custom_every)
        self.__producer = PacedProducer(
            settings, self.__input, self.__stream, per_second, slice_size=max(per_second // 10, 1)
        )

    @staticmethod
    def name(guarantee: str) -> str:
        return f"billing {guarantee}"

    def watched(self) -> Sequence[Watched]:
        return [
            Watched(self.name(g), f"{self.__input}-{g}", self.__input, self.__per_second)
            for g in GUARANTEES
        ]

    def start_workers(self, fleet: Fleet) -> None:
        for guarantee, watched in zip(GUARANTEES, self.watched(), strict=True):
            fleet.add(watched.name, self.__starter(guarantee, watched))

    def __starter(self, guarantee: str, watched: Watched) -> Callable[[], WorkerProcess]:
        def start() -> WorkerProcess:
            return self.__options.process(
                "billing", watched.name, watched.group,
                "--topic", self.__input, "--consumer-group", watched.group,
                "--outcomes-topic", self.__outcomes[guarantee],
                "--processing-guarantee", guarantee,
            )  # fmt: skip

        return start

    def start_stream(self) -> None:
        self.__producer.start()

    def stop_stream(self) -> None:
        self.__producer.stop()
        self.__producer.join()

    def stream_failures(self) -> list[str]:
        return list(self.__producer.failures)

    def backlog(self) -> int:
        return self.__producer.backlog()

    def verify(self) -> list[Verdict]:
        settings = self.__options.stack.settings
        usage: Counter[int] = Counter()
        custom: set[int] = set()
        inputs = committed_records(settings, self.__input, timeout=READ_TIMEOUT_SECONDS)
        for message in inputs:
            bucket = orjson.loads(message.value() or b"")
            if bucket["metric_id"] == CUSTOM_METRIC_ID:
                custom.add(bucket["project_id"])
            else:
                usage[bucket["project_id"]] += 1
        lost_in_kafka = max(self.__producer.produced - len(inputs), 0)
        verdicts = [
            self.__outcomes_verdict(g, usage, lost_in_kafka, watched.name)
            for g, watched in zip(GUARANTEES, self.watched(), strict=True)
        ]
        verdicts.append(self.__flags_verdict(custom))
        return verdicts

    def __outcomes_verdict(
        self, guarantee: str, usage: Counter[int], lost_in_kafka: int, watched: str
    ) -> Verdict:
        settings = self.__options.stack.settings
        records = committed_records(
            settings, self.__outcomes[guarantee], timeout=READ_TIMEOUT_SECONDS
        )
        billed = Counter(orjson.loads(r.value() or b"")["project_id"] for r in records)
        lost = sum(max(count - billed[p], 0) for p, count in usage.items())
        duplicates = sum(max(count - usage[p], 0) for p, count in billed.items())
        return Verdict(
            name=self.name(guarantee),
            units=sum(usage.values()),
            lost=lost + lost_in_kafka,
            duplicates=duplicates,
            duplicates_allowed=guarantee == AT_LEAST_ONCE,
            watched=watched,
            details={"outcomes": len(records), "input_lost_in_kafka": lost_in_kafka},
        )

    def __flags_verdict(self, custom: set[int]) -> Verdict:
        with psycopg.connect(self.__options.stack.settings.database_url) as connection:
            flagged = {
                row[0]
                for row in connection.execute(
                    "SELECT id FROM projects WHERE organization_id = %s AND flags & %s <> 0",
                    (self.__org, HAS_CUSTOM_METRICS_FLAG),
                )
            }
            events: dict[int, int] = dict(
                connection.execute(
                    "SELECT project_id, count(*) FROM analytics_events "
                    "WHERE organization_id = %s AND event_type = %s GROUP BY project_id",
                    (self.__org, FIRST_CUSTOM_METRIC_EVENT),
                ).fetchall()
            )
        lost = sum(1 for p in custom if p not in flagged or p not in events)
        return Verdict(
            name="billing flags",
            units=len(custom),
            lost=lost,
            duplicates=sum(count - 1 for count in events.values()),
            details={"flagged": len(flagged), "events": sum(events.values())},
        )
