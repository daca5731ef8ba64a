"""Blob-ingest under a fault: a stream of 4 KiB chunk-upload events (`streams.BlobStream`,
one in ten a repeat) read by one blob-ingest worker into a storage directory of its own.

Verdict: a unit is a distinct chunk (checksum) of the input. Lost: a chunk without a blob row
owned by the organization, or a row whose object is missing from storage or has another size;
duplicates: rows beyond one blob row and one owner row per chunk. Objects no row references
(a crash between the storage write and the commit leaves them; `workers blobs sweep` removes
them) are reported as `orphan_objects`, not as duplicates.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import psycopg

from bench.chaos.offsets import Watched
from bench.chaos.processes import Fleet
from bench.chaos.stack import create_stream_topics
from bench.chaos.streams import CHUNK_BYTES, BlobStream
from bench.chaos.workload import Verdict, WorkerOptions
from harness.kafka import unique_name
from harness.paced import PacedProducer
from harness.worker_process import WorkerProcess
from workers.common.kafka_offsets import committed_records
from workers.common.projects import create_organization

NAME: Final = "blob-ingest"
READ_TIMEOUT_SECONDS: Final = 180.0


class BlobWorkload:
    def __init__(self, options: WorkerOptions, per_second: int, max_seconds: float) -> None:
        self.__options = options
        self.__per_second = per_second
        settings = options.stack.settings
        self.__input = unique_name("chaos-chunks")
        create_stream_topics(options.stack, self.__input)
        self.__storage = options.stack.scratch / self.__input
        self.__storage.mkdir()
        with psycopg.connect(settings.database_url, autocommit=True) as connection:
            self.__org = create_organization(connection, self.__input, None).id
        stream = BlobStream(int(per_second * max_seconds), self.__org, random.randrange(2**32))
        self.__producer = PacedProducer(
            settings, self.__input, stream, per_second, slice_size=max(per_second // 10, 1)
        )

    def watched(self) -> Sequence[Watched]:
        return [Watched(NAME, f"{self.__input}-group", self.__input, self.__per_second)]

    def start_workers(self, fleet: Fleet) -> None:
        (watched,) = self.watched()
        fleet.add(NAME, self.__starter(watched))

    def __starter(self, watched: Watched) -> Callable[[], WorkerProcess]:
        def start() -> WorkerProcess:
            return self.__options.process(
                "blob-ingest", NAME, watched.group,
                "--topic", self.__input, "--consumer-group", watched.group,
                "--storage-url", f"file://{self.__storage}",
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
        inputs = committed_records(settings, self.__input, timeout=READ_TIMEOUT_SECONDS)
        chunks = {(m.key() or b"").decode() for m in inputs}
        with psycopg.connect(settings.database_url) as connection:
            rows = connection.execute(
                "SELECT b.checksum, b.path, b.size, count(o.id) FROM blobs b "
                "JOIN blob_owners o ON o.blob_id = b.id WHERE o.organization_id = %s "
                "GROUP BY b.id",
                (self.__org,),
            ).fetchall()
        found: dict[str, list[tuple[str, int, int]]] = {}
        for checksum, path, size, owners in rows:
            found.setdefault(checksum.strip(), []).append((path, size, owners))
        broken = sum(
            1
            for entries in found.values()
            for path, size, _ in entries
            if _object_size(self.__storage / path) != size or size != CHUNK_BYTES
        )
        missing = sum(1 for checksum in chunks if checksum not in found)
        duplicates = sum(
            len(entries) - 1 + sum(owners - 1 for _, _, owners in entries)
            for entries in found.values()
        )
        referenced = {path for entries in found.values() for path, _, _ in entries}
        lost_in_kafka = max(self.__producer.produced - len(inputs), 0)
        return [
            Verdict(
                name=NAME,
                units=len(chunks),
                lost=missing + broken + lost_in_kafka,
                duplicates=duplicates,
                watched=NAME,
                details={
                    "messages": len(inputs),
                    "rows": len(rows),
                    "missing_or_wrong_objects": broken,
                    "orphan_objects": _orphans(self.__storage, referenced),
                    "input_lost_in_kafka": lost_in_kafka,
                },
            )
        ]


def _object_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _orphans(root: Path, referenced: set[str]) -> int:
    """Stored objects (not temporary files) that no row references."""
    count = 0
    for directory, _, files in os.walk(root):
        for name in files:
            if name.startswith("."):
                continue
            if os.path.relpath(os.path.join(directory, name), root) not in referenced:
                count += 1
    return count
