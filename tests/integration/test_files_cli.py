"""`workers files list | show` against the real PostgreSQL: rows as the assemble worker and
the gateway write them, inserted directly."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from click.testing import CliRunner, Result
from redis import Redis

from workers.common.projects import Organization, Project, create_organization, create_project
from workers.common.projects.cli import PROJECT_SNOWFLAKE_KEY
from workers.common.settings import Settings
from workers.common.snowflake import SentrySnowflakeGenerator
from workers.common.storage import random_blob_path
from workers.files.cli import files

pytestmark = pytest.mark.integration

BUNDLE_ID = uuid.UUID("5b1e2a0c-1d2e-4f3a-9b8c-7d6e5f4a3b2c")
SCRIPT_DEBUG_ID = uuid.UUID("0f0e0d0c-0b0a-4908-8706-050403020100")


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


@dataclass(frozen=True)
class Files:
    organization: Organization
    project: Project
    debug_task: int
    debug_file: int
    bundle_task: int
    failed_task: int
    pending_task: int
    old_file: int
    blob_id: int
    blob_path: str
    chunks: tuple[str, str]


def _task(
    connection: psycopg.Connection,
    organization: Organization,
    project: Project | None,
    kind: str,
    name: str,
    chunks: list[str],
    state: str,
    detail: str | None = None,
    file_id: int | None = None,
    **extra: object,
) -> int:
    row = connection.execute(
        "INSERT INTO assemble_tasks (organization_id, project_id, kind, checksum, name, chunks, "
        "state, detail, attempts, assembled_file_id, debug_id, projects, release) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 1, %s, %s, %s, %s) RETURNING id",
        (
            organization.id, project.id if project else None, kind,
            sha1(name.encode()), name, chunks, state, detail, file_id,
            extra.get("debug_id"), extra.get("projects", []), extra.get("release"),
        ),
    ).fetchone()  # fmt: skip
    assert row is not None
    task_id: int = row[0]
    return task_id


def _file(
    connection: psycopg.Connection,
    organization: Organization,
    project: Project | None,
    kind: str,
    name: str,
    chunks: list[str],
    size: int,
) -> int:
    row = connection.execute(
        "INSERT INTO assembled_files (organization_id, project_id, kind, name, checksum, chunks, "
        "size) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (organization.id, project.id if project else None, kind, name, sha1(name.encode()),
         chunks, size),
    ).fetchone()  # fmt: skip
    assert row is not None
    file_id: int = row[0]
    return file_id


@pytest.fixture
def stored(
    connection: psycopg.Connection, redis_client: Redis, settings: Settings
) -> Iterator[Files]:
    organization = create_organization(connection, f"files-{uuid.uuid4().hex[:8]}", None)
    generate_id = SentrySnowflakeGenerator(
        redis_client, key=PROJECT_SNOWFLAKE_KEY, region=settings.snowflake_region
    ).generate
    project = create_project(connection, redis_client, generate_id, organization.slug, "Native")
    present = uuid.uuid4().bytes
    chunks = (sha1(present), sha1(uuid.uuid4().bytes))  # the second has no blob
    blob_id, blob_path = uuid.uuid4().int % 2**62, random_blob_path()
    connection.execute(
        "INSERT INTO blobs (id, path, size, checksum) VALUES (%s, %s, 16, %s)",
        (blob_id, blob_path, chunks[0]),
    )

    debug_file = _file(connection, organization, project, "dif", "app.debug", list(chunks), 32)
    debug_task = _task(
        connection, organization, project, "dif", "app.debug", list(chunks), "ok",
        file_id=debug_file,
    )  # fmt: skip
    for arch, debug_id in (("x86_64", "aaaa-1"), ("arm64", "bbbb-2")):
        connection.execute(
            "INSERT INTO debug_files (assembled_file_id, project_id, debug_id, code_id, "
            "cpu_name, object_name, file_format, object_kind, features) "
            "VALUES (%s, %s, %s, 'c0de', %s, 'app.debug', 'macho', 'dbg', %s)",
            (debug_file, project.id, debug_id, arch, ["debug", "symtab"]),
        )

    bundle_file = _file(
        connection, organization, None, "artifact_bundle", "bundle.zip", [chunks[0]], 16
    )
    bundle_task = _task(
        connection, organization, None, "artifact_bundle", "bundle.zip", [chunks[0]], "ok",
        file_id=bundle_file, projects=[project.slug], release="1.0",
    )  # fmt: skip
    row = connection.execute(
        "INSERT INTO artifact_bundles (organization_id, assembled_file_id, bundle_id, "
        "artifact_count) VALUES (%s, %s, %s, 2) RETURNING id",
        (organization.id, bundle_file, BUNDLE_ID),
    ).fetchone()
    assert row is not None
    bundle = row[0]
    connection.execute("INSERT INTO project_artifact_bundles VALUES (%s, %s)", (bundle, project.id))
    connection.execute("INSERT INTO release_artifact_bundles VALUES (%s, '1.0', 'web')", (bundle,))
    connection.execute(
        "INSERT INTO artifact_bundle_index VALUES "
        "(%s, 'files/_/_/main.js', '~/main.js', 'minified_source', %s, 120), "
        "(%s, 'files/_/_/main.js.map', '~/main.js.map', 'source_map', %s, 300)",
        (bundle, SCRIPT_DEBUG_ID, bundle, SCRIPT_DEBUG_ID),
    )

    failed_task = _task(
        connection, organization, project, "dif", "random.bin", [chunks[0]], "error",
        detail="Unsupported debug information file",
    )  # fmt: skip
    pending_task = _task(
        connection, organization, None, "artifact_bundle", "next.zip", list(chunks), "assembling"
    )
    old_file = _file(connection, organization, None, "artifact_bundle", "old.zip", [chunks[0]], 16)
    yield Files(
        organization, project, debug_task, debug_file, bundle_task, failed_task, pending_task,
        old_file, blob_id, blob_path, chunks,
    )  # fmt: skip
    connection.execute("DELETE FROM organizations WHERE id = %s", (organization.id,))
    connection.execute("DELETE FROM blobs WHERE id = %s", (blob_id,))


def _run(*args: str) -> Result:
    return CliRunner().invoke(files, list(args))


def test_list_shows_every_file_and_task_with_its_state(stored: Files) -> None:
    listed = _run("list", "--org", stored.organization.slug)
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0].split() == [
        "ID", "KIND", "STATE", "SIZE", "DEBUG/BUNDLE", "ID", "OBJECTS", "ADDED", "NAME"
    ]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines[1:6]}
    debug = rows[str(stored.debug_task)]
    assert debug[1:6] == ["debug", "ok", "32", "aaaa-1,bbbb-2", "2"]
    assert debug[-1] == "app.debug"
    assert rows[str(stored.bundle_task)][1:6] == ["bundle", "ok", "16", str(BUNDLE_ID), "2"]
    assert rows[str(stored.failed_task)][1:6] == ["debug", "error", "-", "-", "-"]
    assert rows[str(stored.pending_task)][1:6] == ["bundle", "assembling", "-", "-", "-"]
    assert rows[f"file:{stored.old_file}"][1:3] == ["bundle", "ok"]
    assert f"{stored.failed_task}: Unsupported debug information file" in lines[6:]

    bundles = json.loads(_run("list", "--org", stored.organization.slug, "--kind", "bundle",
                              "--json").output)  # fmt: skip
    assert {entry["id"] for entry in bundles} == {
        str(stored.bundle_task), str(stored.pending_task), f"file:{stored.old_file}"
    }  # fmt: skip
    (pending,) = [entry for entry in bundles if entry["id"] == str(stored.pending_task)]
    assert pending["state"] == "assembling"
    assert pending["size"] is None


def test_show_a_debug_file_its_objects_and_blobs(stored: Files) -> None:
    shown = _run("show", str(stored.debug_task))
    assert shown.exit_code == 0, shown.output
    text = shown.output
    assert f"file {stored.debug_task} (debug)" in text
    assert f"project:      {stored.project.slug}" in text
    assert f"organization: {stored.organization.slug}" in text
    assert "objects (2):" in text
    assert "macho   dbg   arm64   bbbb-2    c0de     debug,symtab  app.debug" in text
    assert f"0  {stored.chunks[0]}  16    {stored.blob_id}  {stored.blob_path}" in text
    assert f"1  {stored.chunks[1]}  -     -" in text
    assert text.rstrip().endswith("missing")

    data = json.loads(_run("show", str(stored.debug_task), "--json").output)
    assert data["state"] == "ok"
    assert data["size"] == 32
    assert data["attempts"] == 1
    assert [o["cpu_name"] for o in data["objects"]] == ["arm64", "x86_64"]
    assert data["objects"][0]["features"] == ["debug", "symtab"]
    assert data["chunks"][1] == {
        "checksum": stored.chunks[1], "blob_id": None, "size": None, "path": None
    }  # fmt: skip
    by_file = json.loads(_run("show", f"file:{stored.debug_file}", "--json").output)
    assert by_file["id"] == str(stored.debug_task)


def test_show_a_bundle_its_index_and_a_failed_file(stored: Files) -> None:
    data = json.loads(_run("show", str(stored.bundle_task), "--json").output)
    bundle = data["bundle"]
    assert bundle["bundle_id"] == str(BUNDLE_ID)
    assert bundle["artifact_count"] == 2
    assert bundle["releases"] == [["1.0", "web"]]
    assert bundle["projects"] == [stored.project.slug]
    assert [a["url"] for a in bundle["artifacts"]] == ["~/main.js", "~/main.js.map"]
    assert bundle["artifacts"][1]["debug_id"] == str(SCRIPT_DEBUG_ID)
    assert data["projects"] == [stored.project.slug]
    assert data["release"] == "1.0"
    text = _run("show", str(stored.bundle_task)).output
    assert f"  bundle id: {BUNDLE_ID}" in text
    assert "  releases:  1.0@web" in text
    assert f"files/_/_/main.js.map  ~/main.js.map  source_map       {SCRIPT_DEBUG_ID}  300" in text

    failed = _run("show", str(stored.failed_task)).output
    assert "state:        error" in failed
    assert "detail:       Unsupported debug information file" in failed
    assert "objects (0):" in failed
    old = _run("show", f"file:{stored.old_file}").output
    assert f"file file:{stored.old_file} (bundle)" in old
    assert "attempts:     0" in old


def test_unknown_organization_file_or_malformed_id_is_a_clear_error(stored: Files) -> None:
    unknown_org = _run("list", "--org", f"{stored.organization.slug}-nope")
    assert unknown_org.exit_code == 1
    assert f"no organization with slug '{stored.organization.slug}-nope'" in unknown_org.output
    missing = _run("show", f"file:{stored.old_file + 1_000_000}")
    assert missing.exit_code == 1
    assert f"no file with id file:{stored.old_file + 1_000_000}" in missing.output
    for malformed in ("abc", "file:", "0", "99999999999999999999"):
        refused = _run("show", malformed)
        assert refused.exit_code == 2, malformed
        assert "use a file id as `workers files list` shows it: N or file:N" in refused.output
