"""The blob-ingest chain on Arroyo's LocalBroker with the writer faked: which offsets are
committed, and when, against which batches are stored and committed; what is dead-lettered.
Each test runs the chain both ways it can be fed: one message at a time (Arroyo's DLQ policy)
and in runs through `UnrolledRuns`, as the worker runs it (its own dead letters)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import pytest
from arroyo.backends.abstract import Consumer
from arroyo.backends.kafka import KafkaPayload
from arroyo.backends.local.backend import LocalBroker, LocalConsumer
from arroyo.backends.local.storages.memory import MemoryMessageStorage
from arroyo.dlq import DlqPolicy
from arroyo.processing import StreamProcessor
from arroyo.processing.strategies.abstract import ProcessingStrategyFactory
from arroyo.types import Partition, Topic
from confluent_kafka import KafkaError, Producer
from prometheus_client import CollectorRegistry

from tests.support.billing_fakes import LocalRuns
from tests.support.local_dlq_producer import LocalDlqProducer
from tests.support.run_options import default_run_options
from workers.blob_ingest.decode import VerifiedChunk
from workers.blob_ingest.definition import BLOB_INGEST_CONSUMER
from workers.blob_ingest.metrics import BlobIngestMetrics
from workers.blob_ingest.persist import NewBlob, PersistResult, StoredBatch
from workers.blob_ingest.strategy import (
    POOL_MIN_VALUE_BYTES,
    BatchPersister,
    BlobIngestStrategyFactory,
    ChunkValidator,
)
from workers.common.chunk_uploads import encode_headers
from workers.common.dlq import build_dlq_policy
from workers.common.metrics import FleetMetrics
from workers.common.run_dead_letters import DeadLetterDeliveryError, RunDeadLetters
from workers.common.runner import build_processor
from workers.common.settings import Settings
from workers.common.strategies.unroll_runs import UnrolledRuns

INPUT = Topic("chunk-uploads")
DLQ = Topic("chunk-uploads-dlq")
PARTITION = Partition(INPUT, 0)
ORG = 3
WORKER = "blob-ingest"
DEADLINE = 10.0


def chunk_bytes(number: int, large: bool = False) -> bytes:
    data = f"chunk-{number:06d}".encode()
    return data + b"\0" * (POOL_MIN_VALUE_BYTES if large else 100)


def number_of(chunk: VerifiedChunk) -> int:
    return int(chunk.data[6:12])


class FakeWriter:
    """The two stages in memory. Every event is logged in one list with the consumer's offset
    commits, so the test can check the order; the commit of a batch holding `fail_holding`
    raises; `commit_gate` (when given) holds every commit until it is set."""

    def __init__(self, log: list[tuple[str, int]], lock: threading.Lock) -> None:
        self.log = log
        self.lock = lock
        self.fail_holding: int | None = None
        self.commit_gate: threading.Event | None = None
        self.rows: list[int] = []
        self.discarded: list[int] = []
        self.in_flight = 0
        self.most_in_flight = 0

    def store(self, chunks: Sequence[VerifiedChunk]) -> StoredBatch:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self.log.extend(("stored", number_of(chunk)) for chunk in chunks)
        blobs = [
            NewBlob(number_of(c), f"aa/bbbb/{number_of(c)}", len(c.data), c.checksum)
            for c in chunks
        ]
        return StoredBatch(chunks, {c.checksum: c for c in chunks}, frozenset(), {}, blobs)

    def commit(self, stored: StoredBatch) -> PersistResult:
        if self.commit_gate is not None:
            assert self.commit_gate.wait(DEADLINE)
        numbers = [number_of(chunk) for chunk in stored.chunks]
        try:
            if self.fail_holding in numbers:
                raise RuntimeError("transaction failed")
            with self.lock:
                self.rows.extend(numbers)
                self.log.extend(("committed", number) for number in numbers)
        finally:
            with self.lock:
                self.in_flight -= 1
        return PersistResult(len(numbers), 0, 0, len(numbers), 0, 0, len(numbers))

    def discard(self, stored: StoredBatch) -> None:
        with self.lock:
            self.in_flight -= 1
            self.discarded.extend(number_of(chunk) for chunk in stored.chunks)


#: How each test feeds the chain: `None` one message at a time, a number: runs of that many.
FEEDS = pytest.mark.parametrize("run_length", [None, 3], ids=["per message", "in runs"])


@dataclass
class Chain:
    broker: LocalBroker[KafkaPayload]
    processor: StreamProcessor[Any]
    writer: FakeWriter
    log: list[tuple[str, int]]
    lock: threading.Lock
    dlq_producer: LocalDlqProducer | None

    def run_until(self, done: Callable[[], bool], timeout: float = DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "the chain did not get there in time"
            self.processor._run_once()

    def offset_commits(self) -> list[int]:
        with self.lock:
            return [offset for kind, offset in self.log if kind == "offsets"]

    def dead_letters(self) -> list[tuple[int, str]]:
        consumer = self.broker.get_consumer("dlq-reader")
        self.broker.subscribe(consumer, [DLQ])  # type: ignore[arg-type]
        found: list[tuple[int, str]] = []
        while (message := self.broker.consume(Partition(DLQ, 0), len(found))) is not None:
            headers = dict(message.payload.headers)
            found.append((int(headers["original_offset"]), headers["reason"].decode()))
        return found

    def check_no_commit_past_unpersisted_data(self, invalid: set[int]) -> None:
        """At every offset commit, every valid chunk below it had its rows committed."""
        with self.lock:
            log = list(self.log)
        committed_rows: set[int] = set()
        for kind, value in log:
            if kind == "committed":
                committed_rows.add(value)
            elif kind == "offsets":
                missing = set(range(value)) - invalid - committed_rows
                assert not missing, f"offset {value} committed before the rows of {missing}"


def make_chain(
    values: Sequence[tuple[bytes, str]],
    max_batch_size: int = 4,
    batches_in_flight: int = 2,
    run_length: int | None = None,
    dlq_timeout: float = DEADLINE,
) -> Chain:
    broker: LocalBroker[KafkaPayload] = LocalBroker(MemoryMessageStorage())
    broker.create_topic(INPUT, partitions=1)
    broker.create_topic(DLQ, partitions=1)
    producer = broker.get_producer()
    for value, claimed in values:
        headers = list(encode_headers(ORG, claimed, "identity", 1_700_000_000_000))
        producer.produce(INPUT, KafkaPayload(None, value, headers)).result()
    log: list[tuple[str, int]] = []
    lock = threading.Lock()
    writer = FakeWriter(log, lock)
    registry = CollectorRegistry()
    metrics = FleetMetrics(registry, WORKER)
    blob_metrics = BlobIngestMetrics(registry, WORKER)
    chunk_factory = BlobIngestStrategyFactory(
        ChunkValidator(lambda org: org == ORG, metrics, blob_metrics),
        BatchPersister(writer, metrics, blob_metrics),
        max_batch_size=max_batch_size,
        max_batch_time_seconds=60.0,
        max_batch_bytes=64 * 1024 * 1024,
        decode_threads=2,
        batches_in_flight=batches_in_flight,
    )
    inner = broker.get_consumer(BLOB_INGEST_CONSUMER.consumer_group)
    assert isinstance(inner, LocalConsumer)
    real_commit = inner.commit_offsets

    def commit_offsets() -> Mapping[Partition, int] | None:
        offsets = real_commit()
        with lock:
            log.extend(("offsets", offset) for offset in (offsets or {}).values())
        return offsets

    inner.commit_offsets = commit_offsets  # type: ignore[method-assign]

    def delivered(offset: int) -> None:
        with lock:
            log.append(("dlq", offset))

    consumer: Consumer[Any] = inner
    factory: ProcessingStrategyFactory[Any] = chunk_factory
    dlq_policy: DlqPolicy[KafkaPayload] | None = build_dlq_policy(
        broker.get_producer(), DLQ.name, WORKER, metrics
    )
    dlq_producer = None
    if run_length is not None:
        consumer = LocalRuns(inner, run_length)
        dlq_producer = LocalDlqProducer(broker, delivered)
        dead_letters = RunDeadLetters(
            cast(Producer, dlq_producer),
            DLQ.name,
            WORKER,
            metrics,
            delivery_timeout_seconds=dlq_timeout,
        )
        factory = UnrolledRuns(chunk_factory, dead_letters)
        dlq_policy = None
    definition = replace(BLOB_INGEST_CONSUMER, build_strategy_factory=lambda _: factory)
    processor = build_processor(
        consumer,
        definition,
        replace(default_run_options(definition), commit_interval_ms=0),
        Settings.from_env({}),
        metrics,
        dlq_policy,
    )
    return Chain(broker, processor, writer, log, lock, dlq_producer)


def valid(number: int, large: bool = False) -> tuple[bytes, str]:
    data = chunk_bytes(number, large)
    return data, hashlib.sha1(data).hexdigest()


def corrupt(number: int, large: bool = False) -> tuple[bytes, str]:
    return chunk_bytes(number, large), "0" * 40


@FEEDS
def test_offsets_are_committed_in_order_after_each_batch_is_committed(
    run_length: int | None,
) -> None:
    chain = make_chain([valid(n, large=n % 3 == 0) for n in range(12)], run_length=run_length)
    chain.run_until(lambda: chain.offset_commits()[-1:] == [12])
    assert sorted(chain.writer.rows) == list(range(12))
    commits = chain.offset_commits()
    assert commits == sorted(commits)
    chain.check_no_commit_past_unpersisted_data(invalid=set())


@FEEDS
@pytest.mark.parametrize("large", [True, False], ids=["decoded in the pool", "inline"])
def test_an_invalid_chunk_goes_to_the_dlq_and_its_offset_waits_for_the_batch_before_it(
    large: bool, run_length: int | None
) -> None:
    values = [valid(0), valid(1), corrupt(2, large), valid(3), valid(4), valid(5), valid(6)]
    chain = make_chain(values, run_length=run_length)
    chain.run_until(lambda: chain.offset_commits()[-1:] == [5])
    assert chain.dead_letters() == [
        (2, "checksum_mismatch: sha1 of the chunk is "
         f"{hashlib.sha1(chunk_bytes(2, large)).hexdigest()}, claimed {'0' * 40}"),
    ]  # fmt: skip
    assert sorted(chain.writer.rows) == [0, 1, 3, 4]
    chain.check_no_commit_past_unpersisted_data(invalid={2})
    chain.processor.signal_shutdown()
    chain.processor.run()  # the last, partial batch is flushed and committed on the way out
    assert sorted(chain.writer.rows) == [0, 1, 3, 4, 5, 6]
    assert chain.offset_commits()[-1] == 7
    chain.check_no_commit_past_unpersisted_data(invalid={2})


@FEEDS
def test_a_failed_transaction_commits_neither_its_offsets_nor_the_next_batch(
    run_length: int | None,
) -> None:
    chain = make_chain([valid(n) for n in range(16)], run_length=run_length)
    chain.writer.fail_holding = 5  # the second batch: 4..7
    with pytest.raises(RuntimeError, match="transaction failed"):
        chain.run_until(lambda: False)
    assert max(chain.offset_commits(), default=0) == 4
    assert sorted(chain.writer.rows) == [0, 1, 2, 3]
    # The batch after the failed one was stored (pipelined), but its rows never written
    # and its objects discarded.
    assert set(chain.writer.discarded) <= set(range(8, 16))
    assert not set(chain.writer.rows) & set(range(4, 16))
    chain.check_no_commit_past_unpersisted_data(invalid=set())


@FEEDS
@pytest.mark.parametrize("in_flight", [1, 2, 3])
def test_no_more_batches_than_allowed_are_in_flight(in_flight: int, run_length: int | None) -> None:
    chain = make_chain(
        [valid(n) for n in range(40)],
        max_batch_size=2,
        batches_in_flight=in_flight,
        run_length=run_length,
    )
    gate = threading.Event()
    chain.writer.commit_gate = gate
    chain.run_until(lambda: chain.writer.most_in_flight == in_flight)
    for _ in range(50):  # the consumer goes on polling while the batches wait
        chain.processor._run_once()
    assert chain.writer.most_in_flight == in_flight
    assert chain.offset_commits() in ([], [0])
    gate.set()
    chain.run_until(lambda: chain.offset_commits()[-1:] == [40])
    assert chain.writer.most_in_flight == in_flight
    assert sorted(chain.writer.rows) == list(range(40))
    chain.check_no_commit_past_unpersisted_data(invalid=set())


def test_in_runs_an_offset_past_a_dead_letter_is_committed_only_once_kafka_has_it() -> None:
    values = [valid(0), corrupt(1), valid(2), valid(3), valid(4), valid(5), valid(6), valid(7)]
    chain = make_chain(values, run_length=3)
    producer = chain.dlq_producer
    assert producer is not None
    producer.hold = True

    def acknowledge_after_the_first_batch() -> None:
        # Kafka acknowledges the DLQ copy of 1 only once the batch 0, 2, 3, 4 has its rows.
        deadline = time.monotonic() + DEADLINE
        while not {0, 2, 3, 4} <= set(chain.writer.rows) and time.monotonic() < deadline:
            time.sleep(0.001)
        producer.hold = False

    acknowledging = threading.Thread(target=acknowledge_after_the_first_batch)
    acknowledging.start()
    chain.run_until(lambda: chain.offset_commits()[-1:] == [5])
    acknowledging.join()
    with chain.lock:
        log = list(chain.log)
    assert log.index(("committed", 4)) < log.index(("dlq", 1)) < log.index(("offsets", 5))
    assert [offset for offset, _ in chain.dead_letters()] == [1]
    chain.check_no_commit_past_unpersisted_data(invalid={1})


def test_in_runs_a_dead_letter_kafka_refuses_stops_the_worker_before_its_offset() -> None:
    values = [valid(0), corrupt(1), valid(2), valid(3), valid(4), valid(5)]
    chain = make_chain(values, run_length=3, dlq_timeout=0.2)
    assert chain.dlq_producer is not None
    chain.dlq_producer.fail_with = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
    with pytest.raises(DeadLetterDeliveryError, match=r"offset 1: "):
        chain.run_until(lambda: False)
    assert all(offset <= 1 for offset in chain.offset_commits())
    assert chain.dead_letters() == []


def test_in_runs_a_dead_letter_never_acknowledged_stops_the_worker_at_the_timeout() -> None:
    values = [valid(0), corrupt(1), valid(2), valid(3), valid(4), valid(5)]
    chain = make_chain(values, run_length=3, dlq_timeout=0.2)
    assert chain.dlq_producer is not None
    chain.dlq_producer.hold = True
    with pytest.raises(DeadLetterDeliveryError, match=r"offset 1 not acknowledged within 0.2 s"):
        chain.run_until(lambda: False)
    assert all(offset <= 1 for offset in chain.offset_commits())
