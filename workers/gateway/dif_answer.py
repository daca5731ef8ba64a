"""The `dif` object of an `ok` debug-file answer: upstream's `DebugFileSerializer`
(`src/sentry/api/serializers/models/debug_file.py`), which sentry-cli prints."""

from __future__ import annotations

from datetime import UTC
from typing import Any, Final

from workers.gateway.assemble_types import StoredFile

#: Content types of debug file formats: upstream's `KNOWN_DIF_FORMATS`
#: (`src/sentry/constants.py`), the other way round.
CONTENT_TYPES: Final = {
    "breakpad": "text/x-breakpad",
    "macho": "application/x-mach-binary",
    "elf": "application/x-elf-binary",
    "pe": "application/x-dosexec",
    "pdb": "application/x-ms-pdb",
    "wasm": "application/wasm",
    "proguard": "text/x-proguard+plain",
    "sourcebundle": "application/x-sentry-bundle+zip",
    "bcsymbolmap": "application/x-bcsymbolmap",
    "uuidmap": "application/x-debugid-map",
    "il2cpp": "application/x-il2cpp-json",
    "portablepdb": "application/x-portable-pdb",
}


def _timestamp(file: StoredFile) -> str:
    return file.date_added.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def dif_object(file: StoredFile) -> dict[str, Any]:
    """The file's first debug object as upstream serializes a `ProjectDebugFile`; a file
    assembled before the assemble worker (no `debug_files` row) from what it recorded."""
    common = {"size": file.size, "sha1": file.checksum, "dateCreated": _timestamp(file)}
    found = file.debug_object
    if found is None:
        return {
            "id": str(file.id),
            "uuid": file.debug_id,
            "debugId": file.debug_id,
            "codeId": None,
            "cpuName": file.cpu_name or "unknown",
            "objectName": file.name,
            "symbolType": "unknown",
            "headers": {},
            **common,
            "data": {"features": []},
        }
    content_type = CONTENT_TYPES.get(found.file_format)
    return {
        "id": str(found.id),
        "uuid": found.debug_id[:36],
        "debugId": found.debug_id,
        "codeId": found.code_id,
        "cpuName": found.cpu_name,
        "objectName": found.object_name,
        "symbolType": found.file_format,
        "headers": {} if content_type is None else {"Content-Type": content_type},
        **common,
        "data": {"type": found.object_kind, "features": list(found.features)},
    }
