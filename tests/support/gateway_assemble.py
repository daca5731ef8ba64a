"""What the gateway's assemble tests share: organizations with a project and a token,
chunks uploaded and stored, the task rows and status cache of a file, the requests on the
assemble topic, and a file moved to a state the way the assemble worker would."""

from __future__ import annotations

import subprocess
import sys
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
from redis import Redis

from harness.gateway import GatewayProcess, multipart_body, sha1
from harness.waiting import wait_for
from tests.support.kafka import read_available
from workers.common.assemble_requests import (
    STATUS_TTL_SECONDS,
    AssembleRequest,
    AssembleState,
    decode_assemble_request,
    encode_status,
    status_key,
)
from workers.common.projects import create_organization
from workers.common.settings import Settings
from workers.gateway.tokens import create_token

PROJECT = "native"


@dataclass(frozen=True)
class Org:
    slug: str
    id: int
    project_id: int
    token: str

    def dif_route(self) -> str:
        return f"/api/0/projects/{self.slug}/{PROJECT}/files/difs/assemble/"

    def bundle_route(self) -> str:
        return f"/api/0/organizations/{self.slug}/artifactbundle/assemble/"

    def upload_route(self) -> str:
        return f"/api/0/organizations/{self.slug}/chunk-upload/"


def make_org(settings: Settings, prefix: str = "asm") -> Org:
    slug = f"{prefix}-{uuid.uuid4().hex[:10]}"
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        organization = create_organization(connection, slug, None)
        subprocess.run(
            [sys.executable, "-m", "workers", "projects", "create", "--org", slug,
             "--name", PROJECT],
            check=True, capture_output=True,
        )  # fmt: skip
        (project_id,) = connection.execute(
            "SELECT id FROM projects WHERE organization_id = %s", (organization.id,)
        ).fetchone() or (None,)
        token = create_token(connection, slug, ["project:releases"]).token
    assert project_id is not None
    return Org(slug, organization.id, int(project_id), token)


def client(gateway: GatewayProcess, org: Org) -> httpx.Client:
    headers = {"Authorization": f"Bearer {org.token}"}
    return httpx.Client(base_url=gateway.url, headers=headers, timeout=120)


def dif_answer(
    gateway: GatewayProcess, org: Org, checksum: str, chunks: list[str]
) -> dict[str, Any]:
    """The gateway's answer for one debug file (named `hello`) of these chunks."""
    with client(gateway, org) as http:
        response = http.post(org.dif_route(), json={checksum: {"name": "hello", "chunks": chunks}})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()[checksum]
    return answer


def owned(settings: Settings, org: Org, checksums: list[str]) -> set[str]:
    with psycopg.connect(settings.database_url) as connection:
        rows = connection.execute(
            "SELECT b.checksum FROM blobs b JOIN blob_owners o ON o.blob_id = b.id "
            "WHERE o.organization_id = %s AND b.checksum = ANY(%s)",
            (org.id, checksums),
        ).fetchall()
    return {checksum.strip() for (checksum,) in rows}


def upload_stored(settings: Settings, gateway: GatewayProcess, org: Org, *chunks: bytes) -> None:
    """Upload `chunks` through the gateway and wait until blob-ingest stored them all."""
    body, content_type = multipart_body([("file", sha1(data), data) for data in chunks])
    with client(gateway, org) as http:
        response = http.post(
            org.upload_route(), content=body, headers={"Content-Type": content_type}
        )
    assert response.status_code == 200, response.text
    checksums = [sha1(data) for data in chunks]
    wait_for(lambda: owned(settings, org, checksums) == set(checksums), 60, "the chunks stored")


def tasks(settings: Settings, org: Org, checksum: str) -> list[dict[str, Any]]:
    with psycopg.connect(settings.database_url) as connection:
        cursor = connection.execute(
            "SELECT id, kind, project_id, state, detail, name, chunks, debug_id, projects, "
            "release, dist FROM assemble_tasks WHERE organization_id = %s AND checksum = %s",
            (org.id, checksum),
        )
        names = [column.name for column in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def requests_on(settings: Settings, topic: str) -> list[tuple[bytes | None, AssembleRequest]]:
    """(key, request) of every message on the assemble topic so far."""
    return [
        (record.key, decode_assemble_request(record.value))
        for record in read_available(settings, topic)
    ]


def cached_status(
    redis: Redis, org: Org, kind: str, checksum: str, *, bundle: bool = False
) -> bytes | None:
    project_id = None if bundle else org.project_id
    value = redis.get(status_key(org.id, kind, project_id, checksum))
    return value if isinstance(value, bytes) else None


def set_status(
    settings: Settings,
    org: Org,
    kind: str,
    checksum: str,
    state: AssembleState,
    detail: str | None = None,
    *,
    in_database: bool = True,
    bundle: bool = False,
) -> None:
    """Move a file to `state` as the assemble worker does: the task row, then the cache."""
    if in_database:
        with psycopg.connect(settings.database_url, autocommit=True) as connection:
            updated = connection.execute(
                "UPDATE assemble_tasks SET state = %s, detail = %s, date_updated = now() "
                "WHERE organization_id = %s AND kind = %s AND checksum = %s",
                (state, detail, org.id, kind, checksum),
            ).rowcount
        assert updated == 1
    with Redis.from_url(settings.redis_url) as redis:
        redis.set(
            status_key(org.id, kind, None if bundle else org.project_id, checksum),
            encode_status(state, detail),
            ex=STATUS_TTL_SECONDS,
        )


def record_debug_file(settings: Settings, org: Org, checksum: str, chunks: list[str]) -> int:
    """The `assembled_files` and `debug_files` rows the assemble worker writes for an ELF;
    the id of the `debug_files` row."""
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        row = connection.execute(
            "INSERT INTO assembled_files (organization_id, project_id, kind, name, checksum, "
            "chunks, size, debug_id, cpu_name) VALUES (%s, %s, 'dif', 'hello', %s, %s, %s, "
            "%s, 'x86_64') RETURNING id",
            (
                org.id,
                org.project_id,
                checksum,
                chunks,
                1234,
                "c0bcc3f1-9827-fe65-3058-404b2831d9e6",
            ),
        ).fetchone()
        assert row is not None
        debug_file = connection.execute(
            "INSERT INTO debug_files (assembled_file_id, project_id, debug_id, code_id, "
            "cpu_name, object_name, file_format, object_kind, features) "
            "VALUES (%s, %s, %s, %s, 'x86_64', 'hello', 'elf', 'dbg', %s) RETURNING id",
            (row[0], org.project_id, "c0bcc3f1-9827-fe65-3058-404b2831d9e6", "f1c3bcc0",
             ["debug", "symtab"]),
        ).fetchone()  # fmt: skip
        assert debug_file is not None
        return int(debug_file[0])
