"""What sentry-cli's assemble calls get answered, at once: the gateway never assembles, it
enqueues files for the assemble worker (docs/gateway.md, Assemble; docs/reference.md,
Assemble). Upstream does the same in `DifAssembleEndpoint`
(`src/sentry/api/endpoints/debug_files.py`) and
`OrganizationArtifactBundleAssembleEndpoint`
(`src/sentry/api/endpoints/organization_artifactbundle_assemble.py`).

The files of one request are answered together. For each file, the first of:

1. its status in the Redis cache (`assemble_status`) → that state and detail (an `ok`
   debug file carries the `dif` object of its stored file);
2. its `assemble_tasks` row → that state and detail, except an `error` older than the cache
   (upstream has forgotten it by then: the file may be tried again, from step 3) and a
   `created` enqueued as long ago (its request was lost: it is enqueued again, from step 3);
   no row but an `assembled_files` row (assembled before the assemble worker) → `ok`;
3. no chunks listed → `not_found` (a poll); the organization's blobs of the chunks are
   looked up (those 12 h old get a fresh timestamp, as in upstream's `find_missing_chunks`);
   chunks it owns no blob of and that are not on their way (`pending`) → `not_found` with
   `missingChunks`; chunks still on their way → `created`, without a task;
4. every chunk a blob: the files to enqueue are admitted in request order within
   `max_bytes` of chunks (each chunk counts at least `MIN_CHUNK_COST`); a file that does
   not fit → `error` with a detail. The others get their task row (`created`; concurrent
   requests for one file insert one row), their cached status `created`, and one message
   each on `assemble-requests`, acknowledged by Kafka → `created`.

If Kafka does not take the messages, the rows and statuses just written are removed again
and the request fails (`PublishError`, a 503): the client's retry enqueues the files anew.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

from workers.common.assemble_requests import AssembleStatus
from workers.gateway.assemble_status import AssembleStatusCache
from workers.gateway.assemble_store import PostgresAssembleStore
from workers.gateway.assemble_types import AssembleResult, FileRequest, Target, TaskRow
from workers.gateway.pending import PendingChunks
from workers.gateway.publisher import AssembleRequestPublisher, EnqueuedFile

logger = logging.getLogger(__name__)

GIB: Final = 1024**3
#: Bytes of chunks one request may enqueue (a maximal 4 GiB file fits twice).
DEFAULT_MAX_ASSEMBLE_BYTES: Final = 8 * GIB
#: What a chunk counts for at least: 8 GiB are at most 8,192 chunks for the worker to read.
MIN_CHUNK_COST: Final = 1024 * 1024
#: Checksums per Redis MGET: redis-py packs and parses in Python, on the event loop, so a
#: batch stays short (about 20 ms) and other requests are served in between.
PENDING_BATCH: Final = 2_000


def too_large(limit: int) -> str:
    return (
        f"file too large to assemble: its chunks add up to more than the {limit} bytes "
        "the gateway accepts per assemble request"
    )


def over_budget(limit: int) -> str:
    return (
        f"not assembled: the files of this request need more than the {limit} bytes of chunks "
        "the gateway accepts per assemble request; send it again for the files left "
        "(files already accepted do not count again)"
    )


class Assembler:
    def __init__(
        self,
        store: PostgresAssembleStore,
        statuses: AssembleStatusCache,
        pending: PendingChunks,
        requests: AssembleRequestPublisher,
        max_bytes: int = DEFAULT_MAX_ASSEMBLE_BYTES,
    ) -> None:
        self.__store = store
        self.__statuses = statuses
        self.__pending = pending
        self.__requests = requests
        self.max_bytes = max_bytes

    async def answer_many(
        self, target: Target, requests: Sequence[FileRequest]
    ) -> list[AssembleResult]:
        """The answer for each file of one request, in the request's order."""
        results: list[AssembleResult | None] = [None] * len(requests)
        checksums = list(dict.fromkeys(request.checksum for request in requests))
        cached = await self.__statuses.read(target, checksums)
        tasks = await self.__store.tasks(target, [c for c in checksums if c not in cached])
        wants_file = [
            checksum
            for checksum in checksums
            if (known := cached.get(checksum) or tasks.get(checksum)) is None
            or (known.state == "ok" and target.kind == "dif")
        ]
        files = await self.__store.files(target, wants_file) if wants_file else {}
        unanswered: list[int] = []
        for index, request in enumerate(requests):
            task = tasks.get(request.checksum)
            status: AssembleStatus | TaskRow | None = cached.get(request.checksum)
            if status is None and task is not None and not (task.retryable and request.chunks):
                status = task
            if status is not None:
                file = files.get(request.checksum) if status.state == "ok" else None
                results[index] = AssembleResult(status.state, detail=status.detail, file=file)
            elif task is None and request.checksum in files:
                results[index] = AssembleResult("ok", file=files[request.checksum])
            elif not request.chunks:
                results[index] = AssembleResult("not_found")
            else:
                unanswered.append(index)
        await self.__check_chunks(target, requests, unanswered, results)
        return [result for result in results if result is not None]

    async def __check_chunks(
        self,
        target: Target,
        requests: Sequence[FileRequest],
        unanswered: list[int],
        results: list[AssembleResult | None],
    ) -> None:
        """Steps 3 and 4 for the files the stored state did not answer."""
        if not unanswered:
            return
        distinct = list(dict.fromkeys(c for index in unanswered for c in requests[index].chunks))
        sizes = await self.__store.owned_sizes(target.organization_id, distinct)
        absent = [checksum for checksum in distinct if checksum not in sizes]
        del distinct
        on_the_way: set[str] = set()
        for start in range(0, len(absent), PENDING_BATCH):
            batch = absent[start : start + PENDING_BATCH]
            on_the_way |= await self.__pending.which(target.organization_id, batch)
        left = self.max_bytes
        ready: dict[str, FileRequest] = {}
        for index in unanswered:
            request = requests[index]
            missing = [c for c in dict.fromkeys(request.chunks) if c not in sizes]
            if missing:
                lost = tuple(c for c in missing if c not in on_the_way)
                results[index] = (
                    AssembleResult("not_found", missing_chunks=lost)
                    if lost
                    else AssembleResult("created")
                )
                continue
            cost = sum(max(sizes[checksum], MIN_CHUNK_COST) for checksum in request.chunks)
            if cost > left:
                detail = too_large if cost > self.max_bytes else over_budget
                results[index] = AssembleResult("error", detail=detail(self.max_bytes))
                continue
            left -= cost
            ready[request.checksum] = request
        del sizes
        enqueued = await self.__enqueue(target, list(ready.values()))
        tasks: dict[str, TaskRow] = {}
        if len(enqueued) < len(ready):
            # Another request inserted these rows a moment ago: answer what they say now.
            tasks = await self.__store.tasks(target, [c for c in ready if c not in enqueued])
        for index in unanswered:
            request = requests[index]
            if results[index] is not None:
                continue
            if request.checksum in enqueued:
                results[index] = AssembleResult("created", enqueued=True)
            else:
                task = tasks.get(request.checksum)
                results[index] = (
                    AssembleResult("created")
                    if task is None
                    else AssembleResult(task.state, detail=task.detail)
                )

    async def __enqueue(self, target: Target, ready: list[FileRequest]) -> dict[str, int]:
        """Claim the task rows of `ready` and enqueue those this request claimed; the task
        id of each file enqueued."""
        claimed = await self.__store.claim(target, ready)
        if not claimed:
            return claimed
        checksums = list(claimed)
        try:
            await self.__statuses.set_created(target, checksums)
            await self.__requests.publish(
                [
                    EnqueuedFile(task_id, target.organization_id, checksum)
                    for checksum, task_id in claimed.items()
                ]
            )
        except Exception:
            await self.__release(target, claimed)
            raise
        logger.info(
            "assemble enqueued",
            extra={
                "organization_id": target.organization_id,
                "kind": target.kind,
                "files": len(claimed),
            },
        )
        return claimed

    async def __release(self, target: Target, claimed: dict[str, int]) -> None:
        try:
            await self.__statuses.forget(target, list(claimed))
            await self.__store.release(list(claimed.values()))
        except Exception:
            logger.exception(
                "could not release the tasks of an assemble request Kafka did not take",
                extra={"organization_id": target.organization_id, "tasks": len(claimed)},
            )
