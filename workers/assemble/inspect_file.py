"""What an assembled file holds, by its kind: the objects of a debug information file
(`detect_debug_files`, on its scratch file) or the manifest of an artifact bundle
(`read_artifact_bundle`, through a `ChunkedFile` over its stored chunks: the zip's directory
and manifest are read, a couple of chunk fetches, nothing else).

A file the readers refuse (`BadFile`) ends in `error` with the reader's detail. Any other
failure of a reader ends in `error` with `internal server error` and is logged, as upstream's
`assemble_dif` and `assemble_artifacts` do (`src/sentry/tasks/assemble.py`): a file that
breaks a reader must not stop the worker, or it would be read again after every restart.
Storage failures while a bundle is read are not file errors: they are raised (the worker
stops, the task is done again), except a chunk gone from storage, which ends the file as in
the read step (`Not all chunks available for assembling`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from workers.assemble.artifact_bundles import SeekableBinary, read_artifact_bundle
from workers.assemble.chunked_file import ChunkedFile
from workers.assemble.contents import BadFile, BundleContents, DebugObject
from workers.assemble.debug_files import detect_debug_files
from workers.assemble.outcomes import (
    INTERNAL_ERROR,
    NOT_ALL_CHUNKS,
    AssembledBytes,
    DebugFileContents,
    FileContents,
    Refused,
)
from workers.assemble.tasks import AssembleTask
from workers.common.storage import BlobNotFoundError, StorageError

logger = logging.getLogger(__name__)

DetectDebugFiles = Callable[[Path, str], list[DebugObject]]
ReadArtifactBundle = Callable[[SeekableBinary], BundleContents]


class FileInspector:
    """An assembled file → its `FileContents`, or `Refused`. `fetch_chunk` is the blob
    storage's `get`: a bundle is read through its chunks."""

    def __init__(
        self,
        fetch_chunk: Callable[[str], bytes],
        detect: DetectDebugFiles = detect_debug_files,
        read_bundle: ReadArtifactBundle = read_artifact_bundle,
    ) -> None:
        self.__fetch_chunk = fetch_chunk
        self.__detect = detect
        self.__read_bundle = read_bundle

    def __call__(self, task: AssembleTask, assembled: AssembledBytes) -> FileContents | Refused:
        if task.kind == "dif":
            assert assembled.path is not None, "a debug file is written to a scratch file"
        try:
            if assembled.path is not None:
                return DebugFileContents(tuple(self.__detect(assembled.path, task.name)))
            with ChunkedFile(assembled.chunks, self.__fetch_chunk) as bundle:
                return self.__read_bundle(bundle)
        except BadFile as refused:
            return Refused(refused.detail)
        except BlobNotFoundError:
            return Refused(NOT_ALL_CHUNKS)
        except StorageError:
            raise
        except Exception:
            logger.exception(
                "reading an assembled file failed",
                extra={"task_id": task.id, "kind": task.kind, "size": assembled.size},
            )
            return Refused(INTERNAL_ERROR)
