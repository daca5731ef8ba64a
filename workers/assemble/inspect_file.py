"""What an assembled file holds, by its kind: the objects of a debug information file
(`detect_debug_files`) or the manifest of an artifact bundle (`read_artifact_bundle`).

A file the readers refuse (`BadFile`) ends in `error` with the reader's detail. Any other
failure of a reader ends in `error` with `internal server error` and is logged, as upstream's
`assemble_dif` and `assemble_artifacts` do (`src/sentry/tasks/assemble.py`): a file that
breaks a reader must not stop the worker, or it would be read again after every restart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from workers.assemble.artifact_bundles import read_artifact_bundle
from workers.assemble.contents import BadFile, BundleContents, DebugObject
from workers.assemble.debug_files import detect_debug_files
from workers.assemble.outcomes import (
    INTERNAL_ERROR,
    AssembledBytes,
    DebugFileContents,
    FileContents,
    Refused,
)
from workers.assemble.tasks import AssembleTask

logger = logging.getLogger(__name__)

DetectDebugFiles = Callable[[Path, str], list[DebugObject]]
ReadArtifactBundle = Callable[[Path], BundleContents]


class FileInspector:
    """An assembled file → its `FileContents`, or `Refused`."""

    def __init__(
        self,
        detect: DetectDebugFiles = detect_debug_files,
        read_bundle: ReadArtifactBundle = read_artifact_bundle,
    ) -> None:
        self.__detect = detect
        self.__read_bundle = read_bundle

    def __call__(self, task: AssembleTask, assembled: AssembledBytes) -> FileContents | Refused:
        try:
            if task.kind == "dif":
                return DebugFileContents(tuple(self.__detect(assembled.path, task.name)))
            return self.__read_bundle(assembled.path)
        except BadFile as refused:
            return Refused(refused.detail)
        except Exception:
            logger.exception(
                "reading an assembled file failed",
                extra={"task_id": task.id, "kind": task.kind, "size": assembled.size},
            )
            return Refused(INTERNAL_ERROR)
