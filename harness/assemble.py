"""What the assemble worker's tests and benchmark set up: an organization with a project, a
file's chunks stored as blobs (as blob-ingest stores them), its `assemble_tasks` row, its
request on the topic, and an artifact bundle to assemble."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import uuid
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from confluent_kafka import Producer
from psycopg_pool import ConnectionPool
from redis import Redis

from workers.blob_ingest.decode import VerifiedChunk
from workers.blob_ingest.persist import BlobWriter
from workers.common.assemble_requests import assemble_request_key, encode_assemble_request
from workers.common.database import create_pool
from workers.common.projects import create_organization, create_project
from workers.common.settings import Settings
from workers.common.storage import BlobStorage

CHUNK_SIZE: Final = 8 * 1024 * 1024
#: Chunks written per `BlobWriter.persist` call.
CHUNKS_PER_BATCH: Final = 8
PROJECT: Final = "frontend"
SOURCE_PIECE: Final = 8 * 1024 * 1024


def sha1(data: bytes | memoryview) -> str:
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def random_id() -> int:
    return secrets.randbits(62) + 1


@dataclass(frozen=True)
class AssembleOrg:
    id: int
    slug: str
    project_id: int


@dataclass(frozen=True)
class StoredFile:
    checksum: str
    chunks: tuple[str, ...]
    size: int


def create_org(settings: Settings, prefix: str = "asmw") -> AssembleOrg:
    slug = f"{prefix}-{uuid.uuid4().hex[:10]}"
    with (
        psycopg.connect(settings.database_url, autocommit=True) as connection,
        Redis.from_url(settings.redis_url) as redis,
    ):
        organization = create_organization(connection, slug, None)
        project = create_project(connection, redis, random_id, slug, PROJECT)
    return AssembleOrg(organization.id, slug, project.id)


def store_file(
    settings: Settings,
    storage: BlobStorage,
    organization_id: int,
    data: bytes,
    pool: ConnectionPool | None = None,
) -> StoredFile:
    """`data` split into 8 MiB chunks, each stored as a blob the organization owns (through
    `pool`, or a pool of its own)."""
    view = memoryview(data)
    pieces = [view[start : start + CHUNK_SIZE] for start in range(0, len(data), CHUNK_SIZE)]
    checksums = tuple(sha1(piece) for piece in pieces)
    with contextlib.ExitStack() as resources:
        if pool is None:
            pool = create_pool(settings, name="assemble-harness")
            resources.callback(pool.close)
        writer = BlobWriter(pool, storage, random_id)
        for start in range(0, len(pieces), CHUNKS_PER_BATCH):
            writer.persist(
                [
                    VerifiedChunk(organization_id, checksum, bytes(piece), 0, len(piece))
                    for checksum, piece in zip(
                        checksums[start : start + CHUNKS_PER_BATCH],
                        pieces[start : start + CHUNKS_PER_BATCH],
                        strict=True,
                    )
                ]
            )
    return StoredFile(sha1(data), checksums, len(data))


def create_task(
    settings: Settings,
    org: AssembleOrg,
    kind: str,
    checksum: str,
    chunks: Sequence[str],
    name: str = "bundle.zip",
    state: str = "created",
    projects: Sequence[str] = (),
    release: str | None = None,
    dist: str | None = None,
) -> int:
    """The task's id, inserted as the gateway inserts it (a debug file is the project's)."""
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        row = connection.execute(
            "INSERT INTO assemble_tasks (organization_id, project_id, kind, checksum, name, "
            "chunks, projects, release, dist, state) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (
                org.id,
                org.project_id if kind == "dif" else None,
                kind,
                checksum,
                name,
                list(chunks),
                list(projects),
                release,
                dist,
                state,
            ),
        ).fetchone()
    assert row is not None
    return int(row[0])


def produce_request(
    producer: Producer, topic: str, task_id: int, organization_id: int, checksum: str
) -> None:
    producer.produce(
        topic,
        key=assemble_request_key(checksum),
        value=encode_assemble_request(task_id, organization_id, checksum),
    )
    assert producer.flush(30) == 0


def task_row(settings: Settings, task_id: int) -> dict[str, Any]:
    with psycopg.connect(settings.database_url) as connection:
        row = connection.execute(
            "SELECT state, detail, attempts, assembled_file_id FROM assemble_tasks WHERE id = %s",
            (task_id,),
        ).fetchone()
    assert row is not None, f"no task {task_id}"
    return dict(zip(("state", "detail", "attempts", "assembled_file_id"), row, strict=True))


def artifact_bundle(
    org_slug: str, release: str | None, source_bytes: int, debug_id: uuid.UUID
) -> bytes:
    """A bundle as `sentry-cli sourcemaps upload` makes it, stored (uncompressed): a
    manifest and one minified source of about `source_bytes` with a debug id."""
    manifest = {
        "org": org_slug,
        "release": release,
        "files": {
            "files/_/_/main.js": {
                "url": "~/main.js",
                "type": "minified_source",
                "headers": {"debug-id": str(debug_id)},
            }
        },
        "debug_id": str(debug_id),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as bundle:
        bundle.writestr("manifest.json", json.dumps(manifest))
        with bundle.open("files/_/_/main.js", "w", force_zip64=True) as source:
            source.write(b"function main() { return 1; }\n")
            left = max(0, source_bytes - 128)
            while left > 0:
                # Random text: every chunk of a large bundle differs, as in a real upload.
                piece = min(left, SOURCE_PIECE)
                source.write(os.urandom(piece // 2).hex().encode())
                left -= piece
            source.write(f"\n//# debugId={debug_id}\n".encode())
    return buffer.getvalue()
