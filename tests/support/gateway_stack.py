"""The whole upload path on the real stack, for end-to-end tests: a gateway, a blob-ingest
worker and an assemble worker, on topics of their own, with two organizations; and the real
sentry-cli (the venv's, pinned 3.8.2) pointed at the gateway."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

from harness.gateway import GatewayProcess, sha1
from harness.kafka import make_topics, unique_name
from harness.worker_process import WorkerProcess
from tests.support.debug_file_builders import ensure_toolchain
from workers.assemble.definition import DLQ_TOPIC as ASSEMBLE_DLQ_TOPIC
from workers.blob_ingest.definition import DLQ_TOPIC
from workers.common.projects import create_organization
from workers.common.settings import Settings
from workers.common.storage import FilesystemBlobStorage
from workers.demo.gateway import sentry_cli_path
from workers.gateway.options import CHUNK_SIZE
from workers.gateway.tokens import create_token

# The venv's sentry-cli (the pinned 3.8.2), before any other on PATH.
SENTRY_CLI = sentry_cli_path()
SENTRY_CLI_TIMEOUT_SECONDS = 240


@dataclass
class Org:
    slug: str
    id: int
    project: str
    write_token: str
    read_token: str


@dataclass
class Stack:
    settings: Settings
    org: Org
    other: Org
    topic: str
    #: The gateway's `--assemble-topic` (what the assemble worker reads).
    assemble_topic: str
    storage_root: Path
    gateway: GatewayProcess
    worker: WorkerProcess
    assembler: WorkerProcess

    def client(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.gateway.url, headers=headers, timeout=120)

    def upload_url(self, org: Org | None = None) -> str:
        return f"/api/0/organizations/{(org or self.org).slug}/chunk-upload/"

    def owned(self, organization_id: int, checksums: list[str]) -> dict[str, str]:
        with psycopg.connect(self.settings.database_url) as connection:
            rows = connection.execute(
                "SELECT b.checksum, b.path FROM blobs b JOIN blob_owners o ON o.blob_id = b.id "
                "WHERE o.organization_id = %s AND b.checksum = ANY(%s)",
                (organization_id, checksums),
            ).fetchall()
        return {checksum.strip(): path for checksum, path in rows}


def make_org(connection: psycopg.Connection, settings: Settings) -> Org:
    slug = f"gw-{uuid.uuid4().hex[:10]}"
    organization = create_organization(connection, slug, None)
    project = "native"
    subprocess.run(
        [sys.executable, "-m", "workers", "projects", "create", "--org", slug, "--name", project],
        check=True,
        capture_output=True,
    )
    write = create_token(connection, slug, ["project:releases"]).token
    read = create_token(connection, slug, ["project:read"]).token
    return Org(slug, organization.id, project, write, read)


@contextlib.contextmanager
def running_stack(directory: Path) -> Iterator[Stack]:
    """Gateway, blob-ingest and assemble worker processes; each must exit 0 when stopped."""
    settings = Settings.from_env()
    topic = unique_name("gateway-chunks")
    assemble_topic = unique_name("gateway-assemble-requests")
    make_topics(settings, topic, assemble_topic, DLQ_TOPIC, ASSEMBLE_DLQ_TOPIC, partitions=2)
    storage_root = directory / "blobs"
    storage_root.mkdir()
    scratch = directory / "scratch"
    scratch.mkdir()
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        org = make_org(connection, settings)
        other = make_org(connection, settings)
    storage_url = f"file://{storage_root}"
    worker = WorkerProcess(
        "blob-ingest",
        "--topic", topic, "--consumer-group", topic, "--storage-url", storage_url,
        "--max-batch-time-ms", "50",
        log_name=f"{topic}-worker",
    )  # fmt: skip
    assembler = WorkerProcess(
        "assemble",
        "--topic", assemble_topic, "--consumer-group", assemble_topic,
        "--storage-url", storage_url, "--temp-dir", str(scratch),
        log_name=f"{assemble_topic}-worker",
    )  # fmt: skip
    gateway = GatewayProcess("--topic", topic, "--assemble-topic", assemble_topic, log_name=topic)
    try:
        yield Stack(
            settings, org, other, topic, assemble_topic, storage_root, gateway, worker, assembler
        )
    finally:
        assert gateway.stop() == 0
        assert worker.stop() == 0
        assert assembler.stop() == 0


def elf_with_build_id(directory: Path, name: str = "hello") -> Path:
    """A small program with a build id and debug info, over 8 MiB so it has two chunks.

    Every call makes different bytes in each chunk (a random tag after the padding, and so a
    different build id): blobs are deduplicated by checksum across the whole database, and
    a chunk another test stored in its own storage directory cannot be read from this one.
    """
    ensure_toolchain()
    source = directory / f"{name}.c"
    source.write_text(
        "static const char pad[9 * 1024 * 1024] = {1};\n"
        f'static const char tag[] = "{uuid.uuid4().hex}";\n'
        "int main(int argc, char **argv) { (void)argv; return pad[argc] + tag[argc]; }\n"
    )
    binary = directory / name
    subprocess.run(
        [
            *("gcc", "-g", "-O0", "-fno-toplevel-reorder", "-Wl,--build-id"),
            *("-o", str(binary), str(source)),
        ],
        check=True,
    )
    return binary


def run_sentry_cli(stack: Stack, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "SENTRY_URL": stack.gateway.url,
        "SENTRY_AUTH_TOKEN": stack.org.write_token,
        "SENTRY_ORG": stack.org.slug,
        "SENTRY_PROJECT": stack.org.project,
        "SENTRY_DISABLE_UPDATE_CHECK": "true",
    }
    return subprocess.run(
        [SENTRY_CLI, "--log-level=debug", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=SENTRY_CLI_TIMEOUT_SECONDS,
        check=False,
    )


def chunk_checksums(data: bytes) -> list[str]:
    return [sha1(data[i : i + CHUNK_SIZE]) for i in range(0, len(data), CHUNK_SIZE)]


def assert_blobs_match(stack: Stack, data: bytes) -> None:
    checksums = chunk_checksums(data)
    owned = stack.owned(stack.org.id, checksums)
    assert sorted(owned) == sorted(set(checksums))
    storage = FilesystemBlobStorage(stack.storage_root)
    try:
        for index, checksum in enumerate(checksums):
            expected = data[index * CHUNK_SIZE : (index + 1) * CHUNK_SIZE]
            assert storage.get(owned[checksum]) == expected
    finally:
        storage.close()


def chunk_posts(output: str, stack: Stack) -> int:
    """How many chunk-upload POSTs sentry-cli's debug log shows."""
    return output.count(f"> POST {stack.upload_url()}")
