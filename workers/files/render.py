"""`workers files list | show` as text for people and as JSON for machines."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from workers.files.details import FileDetails
from workers.files.queries import FileSummary

LIST_HEADER = ("ID", "KIND", "STATE", "SIZE", "DEBUG/BUNDLE ID", "OBJECTS", "ADDED", "NAME")


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _text(value: object) -> str:
    if value is None or value == "" or value == ():
        return "-"
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    if isinstance(value, datetime):
        return _when(value)
    return str(value)


def table(header: Sequence[str], rows: Iterable[Sequence[object]], indent: str = "") -> list[str]:
    """Columns padded to their widest cell; empty cells as `-`."""
    cells = [list(header), *([_text(value) for value in row] for row in rows)]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    return [
        (indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))).rstrip()
        for row in cells
    ]


def list_lines(files: Sequence[FileSummary]) -> list[str]:
    """The table, then the detail of each file that has one (an error's reason)."""
    lines = table(
        LIST_HEADER,
        ((f.id, f.kind, f.state, f.size, f.ids, f.objects, f.date_added, f.name) for f in files),
    )
    lines.extend(f"{f.id}: {f.detail}" for f in files if f.detail)
    return lines


def _fields(pairs: Sequence[tuple[str, object]]) -> list[str]:
    width = max(len(label) for label, _ in pairs) + 1
    return [f"  {(label + ':').ljust(width)} {_text(value)}" for label, value in pairs]


def show_lines(details: FileDetails) -> list[str]:
    d = details
    lines = [f"file {d.id} ({d.kind})"]
    lines += _fields(
        [
            ("name", d.name),
            ("checksum", d.checksum),
            ("state", d.state),
            ("detail", d.detail),
            ("size", d.size),
            ("organization", d.organization),
            ("project", d.project),
            ("projects", d.projects),
            ("release", d.release),
            ("dist", d.dist),
            ("added", d.date_added),
            ("attempts", d.attempts),
        ]
    )
    if d.kind == "debug":
        lines.append(f"objects ({len(d.objects)}):")
        lines += table(
            ("FORMAT", "KIND", "ARCH", "DEBUG ID", "CODE ID", "FEATURES", "NAME"),
            (
                (o.file_format, o.object_kind, o.cpu_name, o.debug_id, o.code_id, o.features,
                 o.object_name)
                for o in d.objects
            ),
            indent="  ",
        )  # fmt: skip
    if d.bundle is not None:
        b = d.bundle
        lines.append("bundle:")
        lines += _fields(
            [
                ("bundle id", b.bundle_id),
                ("artifacts", b.artifact_count),
                ("releases", tuple(f"{r}@{dist}" if dist else r for r, dist in b.releases)),
                ("projects", b.projects),
            ]
        )
        lines.append(f"index ({len(b.artifacts)}):")
        lines += table(
            ("PATH", "URL", "TYPE", "DEBUG ID", "SIZE"),
            ((a.path, a.url, a.file_type, a.debug_id, a.size) for a in b.artifacts),
            indent="  ",
        )
    lines.append(f"chunks ({len(d.chunks)}):")
    lines += table(
        ("#", "CHECKSUM", "SIZE", "BLOB ID", "PATH"),
        (
            (position, c.checksum, c.size, c.blob_id, c.path or "missing")
            for position, c in enumerate(d.chunks)
        ),
        indent="  ",
    )
    return lines


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return _when(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def as_json(value: FileDetails | Sequence[FileSummary]) -> str:
    data = (
        [dataclasses.asdict(item) for item in value]
        if isinstance(value, Sequence)
        else dataclasses.asdict(value)
    )
    return json.dumps(data, default=_json_default, indent=2)
