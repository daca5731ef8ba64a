"""The assemble worker under a fault: a steady stream of assemble requests, each for a fresh
artifact bundle whose chunks are already stored (as the gateway leaves them), read by one
assemble worker.

`AssembleStream` makes each file when the producer asks for its request: the bundle's chunks
are stored as the organization's blobs and its `assemble_tasks` row is inserted (`created`),
then the request is produced; so the requests flow at the stream's rate however long the
scenario runs.

Verdict: a unit is a task whose request is in the input topic. Lost: a task that is not `ok`
once the group has committed everything (a file left `assembling` by a killed worker must be
assembled again by its successor, docs/assemble.md, Crash and restart); duplicates:
`assembled_files` rows beyond one per file and `artifact_bundles` rows beyond one per
assembled file. Tasks assembled more than once (`attempts > 1`) are reported as
`reassembled`: the cost of a kill mid-file, not an error.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Final, overload

import psycopg

from bench.chaos.offsets import Watched
from bench.chaos.processes import Fleet
from bench.chaos.stack import create_stream_topics
from bench.chaos.workload import Verdict, WorkerOptions
from harness.assemble import AssembleOrg, artifact_bundle, create_org, create_task, store_file
from harness.kafka import unique_name
from harness.paced import Outbound, PacedProducer
from harness.worker_process import WorkerProcess
from workers.common.assemble_requests import (
    assemble_request_key,
    decode_assemble_request,
    encode_assemble_request,
)
from workers.common.database import create_pool
from workers.common.kafka_offsets import committed_records
from workers.common.settings import Settings
from workers.common.storage import FilesystemBlobStorage

NAME: Final = "assemble"
BUNDLE_BYTES: Final = 2 * 1024 * 1024
READ_TIMEOUT_SECONDS: Final = 60.0


class AssembleStream(Sequence[Outbound]):
    def __init__(
        self, settings: Settings, org: AssembleOrg, storage: FilesystemBlobStorage, length: int
    ) -> None:
        self.__settings, self.__org, self.__storage = settings, org, storage
        self.__length = length
        self.__pool = create_pool(settings, name="chaos-assemble-stream")
        self.__lock = threading.Lock()

    def __len__(self) -> int:
        return self.__length

    @overload
    def __getitem__(self, index: int) -> Outbound: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Outbound]: ...
    def __getitem__(self, index: int | slice) -> Outbound | Sequence[Outbound]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.__length))]
        org = self.__org
        with self.__lock:
            data = artifact_bundle(org.slug, None, BUNDLE_BYTES, uuid.uuid4())
            stored = store_file(self.__settings, self.__storage, org.id, data, self.__pool)
            task_id = create_task(
                self.__settings, org, "artifact_bundle", stored.checksum, stored.chunks
            )
        value = encode_assemble_request(task_id, org.id, stored.checksum)
        return Outbound(value, assemble_request_key(stored.checksum))

    def close(self) -> None:
        self.__pool.close()


class AssembleWorkload:
    def __init__(self, options: WorkerOptions, per_second: int, max_seconds: float) -> None:
        self.__options = options
        self.__per_second = per_second
        settings = options.stack.settings
        self.__input = unique_name("chaos-assemble")
        create_stream_topics(options.stack, self.__input)
        self.__root = options.stack.scratch / self.__input
        (self.__root / "blobs").mkdir(parents=True)
        (self.__root / "tmp").mkdir()
        self.__org = create_org(settings, prefix="chaos")
        self.__storage = FilesystemBlobStorage(self.__root / "blobs")
        self.__stream = AssembleStream(
            settings, self.__org, self.__storage, int(per_second * max_seconds)
        )
        self.__producer = PacedProducer(
            settings, self.__input, self.__stream, per_second, slice_size=1
        )

    def watched(self) -> Sequence[Watched]:
        return [Watched(NAME, f"{self.__input}-group", self.__input, self.__per_second)]

    def start_workers(self, fleet: Fleet) -> None:
        (watched,) = self.watched()
        fleet.add(NAME, self.__starter(watched))

    def __starter(self, watched: Watched) -> Callable[[], WorkerProcess]:
        def start() -> WorkerProcess:
            return self.__options.process(
                "assemble", NAME, watched.group,
                "--topic", self.__input, "--consumer-group", watched.group,
                "--storage-url", f"file://{self.__root / 'blobs'}",
                "--temp-dir", str(self.__root / "tmp"),
            )  # fmt: skip

        return start

    def start_stream(self) -> None:
        self.__producer.start()

    def stop_stream(self) -> None:
        self.__producer.stop()
        self.__producer.join()
        self.__stream.close()
        self.__storage.close()

    def stream_failures(self) -> list[str]:
        return list(self.__producer.failures)

    def backlog(self) -> int:
        return self.__producer.backlog()

    def verify(self) -> list[Verdict]:
        settings = self.__options.stack.settings
        inputs = committed_records(settings, self.__input, timeout=READ_TIMEOUT_SECONDS)
        tasks = {decode_assemble_request(m.value()).task_id for m in inputs}
        with psycopg.connect(settings.database_url) as connection:
            states: dict[int, str] = dict(
                connection.execute(
                    "SELECT id, state || ':' || attempts FROM assemble_tasks "
                    "WHERE organization_id = %s",
                    (self.__org.id,),
                ).fetchall()
            )
            files = Counter(
                row[0]
                for row in connection.execute(
                    "SELECT checksum FROM assembled_files WHERE organization_id = %s",
                    (self.__org.id,),
                )
            )
            bundles = Counter(
                row[0]
                for row in connection.execute(
                    "SELECT assembled_file_id FROM artifact_bundles WHERE organization_id = %s",
                    (self.__org.id,),
                )
            )
        finished = Counter(states.get(t, "missing:0").split(":")[0] for t in tasks)
        lost_in_kafka = max(self.__producer.produced - len(inputs), 0)
        return [
            Verdict(
                name=NAME,
                units=len(tasks),
                lost=len(tasks) - finished["ok"] + lost_in_kafka,
                duplicates=sum(n - 1 for n in files.values())
                + sum(n - 1 for n in bundles.values()),
                watched=NAME,
                details={
                    "task_states": dict(finished),
                    "reassembled": len(
                        [t for t in tasks if int(states.get(t, "x:0").split(":")[1]) > 1]
                    ),
                    "input_lost_in_kafka": lost_in_kafka,
                },
            )
        ]
