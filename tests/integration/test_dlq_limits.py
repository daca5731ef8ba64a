"""DLQ limits on the real stack (docs/operations.md, DLQ limits): a worker fed nothing but
invalid input stops non-zero, names the limit, and commits nothing past the message that
broke it; a mostly valid stream under the limits keeps running."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.billing import usage_bucket
from harness.kafka import make_topics, unique_name
from harness.waiting import wait_for
from harness.worker_process import WorkerProcess
from tests.support.billing import Topics, billing_worker
from tests.support.kafka import produce, read_available, wait_until_committed
from workers.billing.counting import TRANSACTIONS_USAGE_METRIC_ID
from workers.billing.definition import AT_LEAST_ONCE, DLQ_TOPIC, EXACTLY_ONCE
from workers.blob_ingest.definition import DLQ_TOPIC as BLOB_DLQ_TOPIC
from workers.common.kafka_offsets import committed_offsets
from workers.common.settings import Settings

pytestmark = pytest.mark.integration

VALID = 300
INVALID = 200
#: A stopped worker exits within seconds; this bounds a start, a fetch and a shutdown.
EXIT_SECONDS = 60.0
_ERROR = re.compile(
    r"^Error: (?P<worker>[\w-]+) stopped: DLQ limit exceeded at (?P<topic>[\w-]+)\[0\] "
    r"offset (?P<offset>\d+): (?P<detail>.*)$",
    re.MULTILINE,
)


@pytest.fixture(scope="module")
def stack() -> Settings:
    return Settings.from_env()


@dataclass(frozen=True)
class Stop:
    """What a stopped worker said: the offset it stopped at and the limit it named."""

    offset: int
    detail: str
    text: str


def stopped(worker: WorkerProcess, name: str, topic: str, limit: str) -> Stop:
    """Wait for worker `name` to stop beyond `limit`: counted on /metrics, which it serves
    until that is scraped, then exit 1 with the DLQ-limit error about `topic`."""
    counted = f'workers_dlq_limit_exceeded_total{{limit="{limit}",worker="{name}"}} 1.0'
    wait_for(lambda: worker.metrics_containing(counted), EXIT_SECONDS, f"{counted} scraped")
    code = worker.process.wait(EXIT_SECONDS)
    text = worker.log.read_text()
    assert code == 1, text[-3000:]
    errors = [m for m in _ERROR.finditer(text) if m.group("topic") == topic]
    assert errors, text[-3000:]
    error = errors[-1]
    # The last invalid messages with their reasons follow the error.
    tail = text[error.end() :]
    assert "Nothing from that offset on was committed." in tail
    assert re.search(
        rf"Last \d invalid message\(s\):\n  {re.escape(topic)}\[0\] offset \d+: ", tail
    )
    return Stop(int(error.group("offset")), error.group("detail"), text[error.start() :])


def dlq_offsets(stack: Settings, dlq_topic: str, topic: str) -> list[int]:
    return sorted(
        int(r.headers["original_offset"])
        for r in read_available(stack, dlq_topic, timeout=60)
        if r.headers.get("original_topic") == topic.encode()
    )


def committed(stack: Settings, group: str, topic: str) -> int:
    return committed_offsets(stack, group, topic).get(0, 0)


@pytest.mark.parametrize(
    ("guarantee", "limits", "limit", "named"),
    [
        (
            EXACTLY_ONCE,
            (),
            "max_invalid_ratio",
            r"--dlq-max-invalid-ratio 0\.01: \d+ invalid for \d+ valid messages",
        ),
        (
            AT_LEAST_ONCE,
            ("--dlq-max-invalid-ratio", "off", "--dlq-max-consecutive-invalid", "20"),
            "max_consecutive_invalid",
            r"--dlq-max-consecutive-invalid 20: 21 invalid messages in a row",
        ),
    ],
    ids=[EXACTLY_ONCE, AT_LEAST_ONCE],
)
def test_billing_fed_only_invalid_input_stops_without_committing_past_it(
    stack: Settings, guarantee: str, limits: tuple[str, ...], limit: str, named: str
) -> None:
    topics = Topics(unique_name("dlq-limit-in"), unique_name("dlq-limit-out"))
    make_topics(stack, topics.input, partitions=1)
    make_topics(stack, topics.outcomes, DLQ_TOPIC)
    group = topics.group()
    valid = [usage_bucket(TRANSACTIONS_USAGE_METRIC_ID, 2.0, 77, i) for i in range(VALID)]
    produce(stack, topics.input, ((None, value) for value in valid))

    def start() -> WorkerProcess:
        return billing_worker(
            topics.input, topics.outcomes, group, "--processing-guarantee", guarantee, *limits
        )

    worker = start()
    wait_until_committed(stack, group, topics.input)
    # From here on every message is invalid (the kind a schema change upstream would send).
    produce(stack, topics.input, ((None, b'{"not": "a bucket"}') for _ in range(INVALID)))
    stop = stopped(worker, "billing", topics.input, limit)
    assert re.match(named, stop.detail), stop.text
    assert VALID <= stop.offset < VALID + INVALID
    # The valid messages were committed; nothing from the breaking message on.
    assert VALID <= committed(stack, group, topics.input) <= stop.offset

    # A restart reads the invalid stretch again and stops again, at that message or before it
    # (its counts start afresh at the committed offset): no progress past it.
    again = stopped(start(), "billing", topics.input, limit)
    assert VALID <= again.offset <= stop.offset
    assert VALID <= committed(stack, group, topics.input) <= again.offset
    # Only invalid messages before the breaking one may have been dead-lettered (and, in
    # exactly-once mode, only from committed transactions).
    letters = dlq_offsets(stack, DLQ_TOPIC, topics.input)
    assert all(VALID <= offset < stop.offset for offset in letters), letters
    if guarantee == EXACTLY_ONCE:
        assert len(letters) == len(set(letters)), "a message was dead-lettered twice"


def test_billing_keeps_running_on_a_mostly_valid_stream(stack: Settings) -> None:
    topics = Topics(unique_name("dlq-limit-ok-in"), unique_name("dlq-limit-ok-out"))
    make_topics(stack, topics.input, partitions=1)
    make_topics(stack, topics.outcomes, DLQ_TOPIC)
    values = [
        b"{not json" if i % 200 == 7 else usage_bucket(TRANSACTIONS_USAGE_METRIC_ID, 1.0, 5, i)
        for i in range(5000)
    ]
    invalid = [index for index in range(len(values)) if index % 200 == 7]
    produce(stack, topics.input, ((None, value) for value in values))
    worker = billing_worker(topics.input, topics.outcomes, topics.group())
    try:
        wait_until_committed(stack, topics.group(), topics.input, timeout=90)
        assert worker.process.poll() is None, "the worker stopped under its limits"
    finally:
        assert worker.stop() == 0
    assert dlq_offsets(stack, DLQ_TOPIC, topics.input) == invalid


def test_blob_ingest_stops_at_the_consecutive_limit_after_dead_lettering_up_to_it(
    stack: Settings, tmp_path: Path
) -> None:
    topic = unique_name("dlq-limit-chunks")
    make_topics(stack, topic, partitions=1)
    make_topics(stack, BLOB_DLQ_TOPIC)
    # Chunks without their headers: every one is invalid (`missing_header`).
    produce(stack, topic, ((None, b"chunk %d" % index) for index in range(50)))
    worker = WorkerProcess(
        "blob-ingest",
        "--topic", topic, "--consumer-group", topic, "--storage-url", f"file://{tmp_path}",
        "--dlq-max-consecutive-invalid", "5", "--dlq-max-invalid-ratio", "off",
        log_name=topic,
    )  # fmt: skip
    stop = stopped(worker, "blob-ingest", topic, "max_consecutive_invalid")
    assert stop.offset == 5
    assert stop.detail.startswith("--dlq-max-consecutive-invalid 5: 6 invalid messages in a row")
    assert "offset 5: missing_header" in stop.text
    assert committed(stack, topic, topic) <= 5
    # The five within the limit went to the DLQ (Arroyo's DLQ producer is flushed at exit).
    assert dlq_offsets(stack, BLOB_DLQ_TOPIC, topic) == [0, 1, 2, 3, 4]


def test_with_several_processes_the_stopped_child_stops_the_worker(
    stack: Settings, tmp_path: Path
) -> None:
    topic = unique_name("dlq-limit-chunks")
    make_topics(stack, topic, partitions=2)
    make_topics(stack, BLOB_DLQ_TOPIC)
    produce(stack, topic, ((b"key %d" % index, b"chunk %d" % index) for index in range(100)))
    worker = WorkerProcess(
        "blob-ingest",
        "--topic", topic, "--consumer-group", topic, "--storage-url", f"file://{tmp_path}",
        "--processes", "2", "--dlq-max-consecutive-invalid", "3",
        log_name=topic,
    )  # fmt: skip
    code = worker.process.wait(EXIT_SECONDS)
    text = worker.log.read_text()
    assert code == 1, text[-3000:]
    assert re.search(
        rf"^Error: blob-ingest stopped: DLQ limit exceeded at {topic}\[[01]\] offset \d+: "
        r"--dlq-max-consecutive-invalid 3: 4 invalid messages in a row\.$",
        text,
        re.MULTILINE,
    ), text[-3000:]
    # The child printed the error, not a traceback (log records are JSON lines).
    assert not any(line.startswith("Traceback") for line in text.splitlines())
    for partition, offset in committed_offsets(stack, topic, topic).items():
        assert offset <= 3, (partition, offset)
