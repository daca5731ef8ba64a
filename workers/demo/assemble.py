"""The assemble worker's part in `workers demo`.

Fed directly: a request for a file of the demo organization whose chunk was never uploaded
(it ends in `error`, `Not all chunks available for assembling`; on later runs the task is
already finished and the request is skipped), plus a malformed request and one for a task
that does not exist (both dead-lettered). Files uploaded through the gateway by the other
workers' demo reach it through the gateway's own requests.
"""

from __future__ import annotations

import hashlib
from typing import Final

import psycopg
from arroyo.backends.kafka import KafkaPayload

from workers.common.assemble_requests import assemble_request_key, encode_assemble_request
from workers.common.demo_hooks import DemoContext, DemoFeed, DemoHooks
from workers.demo.organization import DEMO_ORGANIZATION, demo_organization
from workers.demo.scrape import metric_total
from workers.files.queries import list_files

#: Files listed in the summary (newest first).
MAX_FILES_SHOWN: Final = 5


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


def _demo_task(demo: DemoContext) -> tuple[int, int, str]:
    """(task id, organization id, checksum) of the demo's file with a missing chunk."""
    organization = demo_organization(demo.settings)
    checksum = _sha1(f"demo file {demo.seed}")
    with psycopg.connect(demo.settings.database_url, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO assemble_tasks (organization_id, kind, checksum, name, chunks, state) "
            "VALUES (%s, 'artifact_bundle', %s, 'bundle.zip', %s, 'created') "
            "ON CONFLICT DO NOTHING",
            (organization.id, checksum, [_sha1(f"demo chunk {demo.seed}")]),
        )
        row = connection.execute(
            "SELECT id FROM assemble_tasks WHERE organization_id = %s AND kind = "
            "'artifact_bundle' AND project_id IS NULL AND checksum = %s",
            (organization.id, checksum),
        ).fetchone()
    assert row is not None
    return int(row[0]), organization.id, checksum


def _feed(demo: DemoContext) -> DemoFeed:
    task_id, organization_id, checksum = _demo_task(demo)
    key = assemble_request_key(checksum)
    messages = [
        KafkaPayload(key, encode_assemble_request(task_id, organization_id, checksum), []),
        KafkaPayload(None, b'{"task_id": "not a number"}', []),
        KafkaPayload(key, encode_assemble_request(2**62, organization_id, checksum), []),
    ]
    sent = demo.produce(demo.topic, messages)
    return DemoFeed(sent, [f"assemble: task {task_id} (a file whose chunk never arrived)"])


def _summarise(demo: DemoContext, metrics_text: str) -> list[str]:
    files = "workers_assemble_files_total"
    ok = metric_total(metrics_text, files, result="ok")
    error = metric_total(metrics_text, files, result="error")
    skipped = metric_total(metrics_text, "workers_assemble_skipped_total")
    read = metric_total(metrics_text, "workers_assemble_read_bytes_total")
    return [
        f"files ok={ok:.0f} error={error:.0f} skipped={skipped:.0f} bytes read={read:.0f}",
        f"files of {DEMO_ORGANIZATION} (workers files list --org {DEMO_ORGANIZATION}):",
        *_file_lines(demo),
    ]


def _file_lines(demo: DemoContext) -> list[str]:
    """Each file of the demo organization with its state (and an error's detail)."""
    organization = demo_organization(demo.settings)
    with psycopg.connect(demo.settings.database_url) as connection:
        files = list_files(connection, organization.id)
    lines = []
    for file in files[:MAX_FILES_SHOWN]:
        objects = "" if file.objects is None else f", {file.objects} object(s)"
        lines.append(f"  {file.id} {file.name} ({file.kind}): {file.state}{objects}")
        if file.detail:
            lines.append(f"    {file.detail}")
    return lines


ASSEMBLE_DEMO: Final = DemoHooks(feed=_feed, summarise=_summarise)
