"""One assemble request, end to end (docs/assemble.md, The assemble worker):

    claim → read (chunks, sha1; a debug file → scratch file) → inspect (by kind)
          → record (one transaction) → status cache

It runs in the worker's one assemble thread (`RunTaskInThreads`, see `strategy.py`), one file
at a time. A request for a task that is not there raises `InvalidMessage` (`unknown_task`);
a request for a finished task does no work: it counts, and writes the stored state to the
status cache again (the cache may have expired, or a late request may have set `created`).
A debug file's scratch file is removed whatever happens (an artifact bundle has none: it is
read through its stored chunks).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from time import perf_counter
from typing import Protocol

from arroyo.dlq import InvalidMessage
from arroyo.types import BrokerValue, Message

from workers.assemble.metrics import AssembleMetrics
from workers.assemble.outcomes import INTERNAL_ERROR, AssembledBytes, FileContents, Refused
from workers.assemble.tasks import AssembleTask, FinishedTask
from workers.common.assemble_requests import AssembleRequest, AssembleState
from workers.common.metrics import FleetMetrics

logger = logging.getLogger(__name__)

CLAIM_STEP = "claim"
READ_STEP = "read"
INSPECT_STEP = "inspect"
RECORD_STEP = "record"
#: Starts of one task before it ends in `error` (a file that kills the worker every time).
DEFAULT_MAX_ATTEMPTS = 5


class Recorder(Protocol):
    """`record.TaskRecorder`: the final state, durable on return."""

    def ok(self, task: AssembleTask, assembled: AssembledBytes, contents: FileContents) -> int: ...

    def error(self, task: AssembleTask, detail: str) -> None: ...


class StatusWriter(Protocol):
    """`status_cache.StatusCache`."""

    def set(
        self,
        organization_id: int,
        kind: str,
        project_id: int | None,
        checksum: str,
        state: AssembleState,
        detail: str | None = None,
    ) -> None: ...


class FileAssembly:
    """`Message[AssembleRequest]` → the state the task is in once its request is done."""

    def __init__(
        self,
        claim: Callable[[AssembleRequest], AssembleTask | FinishedTask | None],
        read: Callable[[AssembleTask], AssembledBytes | Refused],
        inspect: Callable[[AssembleTask, AssembledBytes], FileContents | Refused],
        recorder: Recorder,
        status: StatusWriter,
        metrics: FleetMetrics,
        assemble_metrics: AssembleMetrics,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        self.__claim = claim
        self.__read = read
        self.__inspect = inspect
        self.__recorder = recorder
        self.__status = status
        self.__steps = {name: metrics.step(name) for name in (CLAIM_STEP, READ_STEP, INSPECT_STEP)}
        self.__record_step = metrics.step(RECORD_STEP)
        self.__metrics = assemble_metrics
        self.__max_attempts = max_attempts

    def __call__(self, message: Message[AssembleRequest]) -> AssembleState:
        step = self.__steps[CLAIM_STEP]
        step.message_in()
        with step.time():
            claimed = self.__claim(message.payload)
        if claimed is None:
            step.invalid("unknown_task")
            value = message.value
            assert isinstance(value, BrokerValue)
            request = message.payload
            raise InvalidMessage(
                value.partition,
                value.offset,
                reason=f"unknown_task: no task {request.task_id} of organization "
                f"{request.organization_id} for file {request.checksum}",
                log_exception=False,
            )
        step.message_out()
        if isinstance(claimed, FinishedTask):
            self.__metrics.skipped[claimed.state].inc()
            self.__cache(claimed, claimed.state, claimed.detail)
            return claimed.state
        self.__cache(claimed, "assembling")
        started = perf_counter()
        state = self.__assemble(claimed)
        self.__metrics.seconds[claimed.kind].observe(perf_counter() - started)
        self.__metrics.files[claimed.kind, state].inc()
        return state

    def __assemble(self, task: AssembleTask) -> AssembleState:
        if task.attempts > 1:
            self.__metrics.resumed.inc()
            logger.info("assembling again", extra={"task_id": task.id, "attempts": task.attempts})
        if task.attempts > self.__max_attempts:
            logger.error(
                "task started too many times; giving up",
                extra={"task_id": task.id, "attempts": task.attempts},
            )
            return self.__finish(task, Refused(INTERNAL_ERROR))
        read = self.__steps[READ_STEP]
        read.message_in()
        with read.time():
            assembled = self.__read(task)
        read.message_out()
        if isinstance(assembled, Refused):
            return self.__finish(task, assembled)
        try:
            inspect = self.__steps[INSPECT_STEP]
            inspect.message_in()
            with inspect.time():
                contents = self.__inspect(task, assembled)
            inspect.message_out()
            return self.__finish(task, contents, assembled)
        finally:
            if assembled.path is not None:
                assembled.path.unlink(missing_ok=True)

    def __finish(
        self,
        task: AssembleTask,
        outcome: FileContents | Refused,
        assembled: AssembledBytes | None = None,
    ) -> AssembleState:
        step = self.__record_step
        step.message_in()
        with step.time():
            if isinstance(outcome, Refused):
                self.__recorder.error(task, outcome.detail)
                self.__cache(task, "error", outcome.detail)
                state: AssembleState = "error"
            else:
                assert assembled is not None
                self.__recorder.ok(task, assembled, outcome)
                self.__cache(task, "ok")
                state = "ok"
        step.message_out()
        logger.info(
            "file assembled",
            extra={
                "task_id": task.id,
                "kind": task.kind,
                "state": state,
                "detail": outcome.detail if isinstance(outcome, Refused) else None,
                "size": assembled.size if assembled is not None else None,
                "attempts": task.attempts,
            },
        )
        return state

    def __cache(
        self, task: AssembleTask | FinishedTask, state: AssembleState, detail: str | None = None
    ) -> None:
        self.__status.set(
            task.organization_id, task.kind, task.project_id, task.checksum, state, detail
        )
