"""The life of a blob (docs/assemble.md, Blob lifecycle): assembling a file refreshes its
chunks' timestamps; the sweep deletes blobs that no assembled file references once older
than the retention."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg


def refresh_blob_timestamps(connection: psycopg.Connection, checksums: Sequence[str]) -> int:
    """Set `timestamp = now()` on the blobs of `checksums`; returns how many rows changed."""
    raise NotImplementedError("filled in by the blob-lifecycle change")
