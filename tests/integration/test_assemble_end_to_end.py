"""Issue 15 end to end: the real sentry-cli 3.8.2 (and plain HTTP where sentry-cli would
refuse the file itself) → the gateway → blob-ingest → the assemble worker → PostgreSQL,
on the real stack (docs/assemble.md)."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from harness.assemble import artifact_bundle
from harness.gateway import multipart_body, sha1
from harness.waiting import wait_for
from tests.support.assemble_worker import metric
from tests.support.gateway_stack import (
    Stack,
    assert_blobs_match,
    chunk_checksums,
    chunk_posts,
    elf_with_build_id,
    run_sentry_cli,
    running_stack,
)
from workers.gateway.options import CHUNK_SIZE

pytestmark = pytest.mark.integration

ASSEMBLE_SECONDS = 120.0
POLLERS = 20
#: 4 chunks of 8 MiB: the options document's request size.
CHUNKS_PER_REQUEST = 4
#: What upstream answers for a file symbolic does not recognise
#: (docs/debug-files-and-bundles.md, Debug information files).
NOT_A_DEBUG_FILE = "Invalid debug information file: unsupported object file format"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("assemble-e2e")) as running:
        yield running


def _dif_route(stack: Stack) -> str:
    return f"/api/0/projects/{stack.org.slug}/{stack.org.project}/files/difs/assemble/"


def _bundle_route(stack: Stack) -> str:
    return f"/api/0/organizations/{stack.org.slug}/artifactbundle/assemble/"


def _upload_chunks(stack: Stack, data: bytes) -> list[str]:
    """Every chunk of `data`, `CHUNKS_PER_REQUEST` per chunk-upload request (as sentry-cli
    does, within the request size the options document states); their checksums in order."""
    pieces = [data[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)]
    checksums = [sha1(piece) for piece in pieces]
    parts = [("file", checksum, piece) for checksum, piece in zip(checksums, pieces, strict=True)]
    with stack.client(stack.org.write_token) as client:
        for start in range(0, len(parts), CHUNKS_PER_REQUEST):
            body, content_type = multipart_body(parts[start : start + CHUNKS_PER_REQUEST])
            answer = client.post(
                stack.upload_url(), content=body, headers={"Content-Type": content_type}
            )
            assert answer.status_code == 200, answer.text
    return checksums


def _dif_answer(stack: Stack, checksum: str, name: str, chunks: list[str]) -> dict[str, Any]:
    with stack.client(stack.org.write_token) as client:
        answer = client.post(_dif_route(stack), json={checksum: {"name": name, "chunks": chunks}})
    assert answer.status_code == 200, answer.text
    entry: dict[str, Any] = answer.json()[checksum]
    return entry


def _features_in_table(stack: Stack, checksum: str) -> list[str]:
    with psycopg.connect(stack.settings.database_url) as connection:
        row = connection.execute(
            "SELECT d.features FROM debug_files d "
            "JOIN assembled_files f ON f.id = d.assembled_file_id "
            "WHERE f.organization_id = %s AND f.kind = 'dif' AND f.checksum = %s",
            (stack.org.id, checksum),
        ).fetchone()
    assert row is not None, f"no debug_files row for {checksum}"
    return list(row[0])


def test_sentry_cli_uploads_debug_files_with_and_without_debug_information(
    stack: Stack, tmp_path: Path
) -> None:
    binary = elf_with_build_id(tmp_path)
    stripped = tmp_path / "hello-stripped"
    subprocess.run(["strip", "-o", str(stripped), str(binary)], check=True)
    features: dict[str, tuple[list[str], list[str]]] = {}
    for path in (binary, stripped):
        data = path.read_bytes()
        assert len(data) > CHUNK_SIZE
        upload = run_sentry_cli(stack, "debug-files", "upload", "--wait", str(path), home=tmp_path)
        assert upload.returncode == 0, upload.stdout + upload.stderr
        assert chunk_posts(upload.stderr, stack) >= 1
        assert "OK " in upload.stdout, upload.stdout
        assert f"({path.name}; x86_64" in upload.stdout, upload.stdout
        assert_blobs_match(stack, data)
        answer = _dif_answer(stack, sha1(data), path.name, chunk_checksums(data))
        assert answer["state"] == "ok", answer
        assert answer["dif"]["objectName"] == path.name
        assert answer["dif"]["symbolType"] == "elf"
        features[path.name] = (
            answer["dif"]["data"]["features"],
            _features_in_table(stack, sha1(data)),
        )
    with_debug, without = features[binary.name], features[stripped.name]
    assert with_debug[0] == with_debug[1]
    assert without[0] == without[1]
    assert "debug" in with_debug[1]
    assert "debug" not in without[1]
    assert "symtab" in with_debug[1]

    accepted = stack.gateway.metric("workers_gateway_chunks_accepted_total")
    again = run_sentry_cli(stack, "debug-files", "upload", "--wait", str(binary), home=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert chunk_posts(again.stderr, stack) == 0
    assert stack.gateway.metric("workers_gateway_chunks_accepted_total") == accepted


def test_a_file_that_is_not_a_debug_file_ends_in_error_with_upstreams_detail(
    stack: Stack,
) -> None:
    # sentry-cli checks files itself and never uploads one symbolic cannot read, so this
    # client is plain HTTP, as a broken or hostile client would be.
    data = os.urandom(CHUNK_SIZE + 1000)
    chunks = _upload_chunks(stack, data)
    answers: list[dict[str, Any]] = []

    def finished() -> bool:
        answers.append(_dif_answer(stack, sha1(data), "random.bin", chunks))
        return answers[-1]["state"] in ("ok", "error")

    wait_for(finished, timeout=ASSEMBLE_SECONDS, what="the file's assemble to finish")
    assert answers[-1]["state"] == "error", answers[-1]
    assert answers[-1]["detail"] == NOT_A_DEBUG_FILE
    assert {answer["state"] for answer in answers} <= {"created", "assembling", "error"}
    with psycopg.connect(stack.settings.database_url) as connection:
        assembled = connection.execute(
            "SELECT count(*) FROM assembled_files WHERE organization_id = %s AND checksum = %s",
            (stack.org.id, sha1(data)),
        ).fetchone()
    assert assembled == (0,)


def test_sentry_cli_injects_then_uploads_a_bundle_whose_debug_ids_are_indexed(
    stack: Stack, tmp_path: Path
) -> None:
    assets = tmp_path / "dist"
    assets.mkdir()
    (assets / "app.min.js").write_text(
        'function hello(){console.log("hi")}hello();\n//# sourceMappingURL=app.min.js.map\n'
    )
    (assets / "app.min.js.map").write_text(
        '{"version":3,"file":"app.min.js","sources":["app.js"],'
        '"sourcesContent":["function hello() {}\\n"],"names":[],"mappings":"AAAA"}'
    )
    injected = run_sentry_cli(stack, "sourcemaps", "inject", str(assets), home=tmp_path)
    assert injected.returncode == 0, injected.stderr
    found = re.search(r"//# debugId=([0-9a-fA-F-]{36})", (assets / "app.min.js").read_text())
    assert found is not None, "sentry-cli injected no debug id"
    debug_id = uuid.UUID(found.group(1))

    upload = run_sentry_cli(stack, "sourcemaps", "upload", "--wait", str(assets), home=tmp_path)
    assert upload.returncode == 0, upload.stdout + upload.stderr
    assert f"> POST {_bundle_route(stack)}" in upload.stderr
    with psycopg.connect(stack.settings.database_url) as connection:
        rows = connection.execute(
            "SELECT b.id, f.chunks, f.projects FROM artifact_bundles b "
            "JOIN assembled_files f ON f.id = b.assembled_file_id WHERE b.organization_id = %s",
            (stack.org.id,),
        ).fetchall()
        assert len(rows) == 1
        bundle_id, chunks, projects = rows[0]
        indexed = connection.execute(
            "SELECT debug_id, source_file_type FROM debug_id_artifact_bundles "
            "WHERE artifact_bundle_id = %s",
            (bundle_id,),
        ).fetchall()
        urls = connection.execute(
            "SELECT url, file_type, debug_id FROM artifact_bundle_index "
            "WHERE artifact_bundle_id = %s ORDER BY url",
            (bundle_id,),
        ).fetchall()
        project_links = connection.execute(
            "SELECT count(*) FROM project_artifact_bundles WHERE artifact_bundle_id = %s",
            (bundle_id,),
        ).fetchone()
    assert projects == [stack.org.project]
    assert project_links == (1,)
    assert set(indexed) == {(debug_id, "minified_source"), (debug_id, "source_map")}
    assert urls == [
        ("~/app.min.js", "minified_source", debug_id),
        ("~/app.min.js.map", "source_map", debug_id),
    ]
    checksums = [c.strip() for c in chunks]
    assert sorted(stack.owned(stack.org.id, checksums)) == sorted(set(checksums))

    again = run_sentry_cli(stack, "sourcemaps", "upload", "--wait", str(assets), home=tmp_path)
    assert again.returncode == 0, again.stderr
    assert chunk_posts(again.stderr, stack) == 0


def test_many_concurrent_polls_of_one_large_file_assemble_it_once(stack: Stack) -> None:
    data = artifact_bundle(stack.org.slug, "1.0", 48 * 1024 * 1024, uuid.uuid4())
    chunks = _upload_chunks(stack, data)
    body = {"checksum": sha1(data), "chunks": chunks, "projects": [stack.org.project]}
    before = metric(stack.assembler, "workers_assemble_files_total", kind="artifact_bundle")
    states: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()

    def poll() -> None:
        with httpx.Client(
            base_url=stack.gateway.url,
            headers={"Authorization": f"Bearer {stack.org.write_token}"},
            timeout=60,
        ) as client:

            def done() -> bool:
                answer = client.post(_bundle_route(stack), json=body)
                if answer.status_code != 200:
                    with lock:
                        failures.append(f"{answer.status_code} {answer.text[:200]}")
                    return True
                state = answer.json()["state"]
                with lock:
                    states.append(state)
                return state in ("ok", "error")

            wait_for(done, timeout=ASSEMBLE_SECONDS, what="the bundle to be assembled")

    pollers = [threading.Thread(target=poll) for _ in range(POLLERS)]
    for poller in pollers:
        poller.start()
    for poller in pollers:
        poller.join()
    assert not failures, failures[:3]
    assert len(states) >= POLLERS
    assert states.count("ok") == POLLERS, set(states)
    wait_for(
        lambda: (
            metric(stack.assembler, "workers_assemble_files_total", kind="artifact_bundle")
            >= before + 1
        ),
        timeout=ASSEMBLE_SECONDS,
        what="the worker's count of assembled bundles",
    )
    assert (
        metric(stack.assembler, "workers_assemble_files_total", kind="artifact_bundle")
        == before + 1
    )
    with psycopg.connect(stack.settings.database_url) as connection:
        task = connection.execute(
            "SELECT state, attempts FROM assemble_tasks WHERE organization_id = %s "
            "AND kind = 'artifact_bundle' AND checksum = %s",
            (stack.org.id, sha1(data)),
        ).fetchone()
    assert task == ("ok", 1)
