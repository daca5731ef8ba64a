"""`workers chunks produce` and `workers blobs sweep`."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import click
import psycopg
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from workers.blob_ingest.definition import INPUT_TOPIC
from workers.blob_ingest.sweep import (
    SweepReport,
    delete_garbage,
    find_garbage,
    write_sweep_metrics,
)
from workers.blob_ingest.upload import ChunkProducer, iter_chunks
from workers.common import durations as common_durations
from workers.common.blob_lifecycle import check_retention
from workers.common.database import create_pool
from workers.common.kafka_config import producer_configuration
from workers.common.projects import ProjectStoreError, find_organization
from workers.common.settings import Settings
from workers.common.storage import open_blob_storage


def parse_duration(text: str) -> timedelta:
    """A duration option (`workers.common.durations`), as a click usage error."""
    try:
        return common_durations.parse_duration(text)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


@click.group(help="Chunk-upload events.")
def chunks() -> None:
    pass


@chunks.command("produce", help="Split files into 8 MiB chunks and produce them to Kafka.")
@click.argument(
    "paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--org", "organization", required=True, help="Organization slug.")
@click.option("--gzip/--no-gzip", "use_gzip", default=False, help="Compress each chunk.")
@click.option("--topic", default=INPUT_TOPIC, show_default=True)
def chunks_produce(paths: tuple[Path, ...], organization: str, use_gzip: bool, topic: str) -> None:
    settings = Settings.from_env()
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        try:
            organization_id = find_organization(connection, organization).id
        except ProjectStoreError as error:
            raise click.ClickException(str(error)) from None
    producer = ChunkProducer(
        producer_configuration(settings, client_id="workers-chunks-produce"), topic
    )
    total = sum(path.stat().st_size for path in paths)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task("acknowledged", total=total)
        for path in paths:
            for chunk in iter_chunks(path, use_gzip):
                producer.send(
                    chunk,
                    organization_id,
                    "gzip" if use_gzip else "identity",
                    lambda size: progress.advance(task, size),
                )
        report = producer.finish()
    click.echo(
        f"files={len(paths)} chunks={report.chunks} bytes={report.bytes} failed={report.failed}"
    )
    if report.failed:
        raise click.ClickException(
            f"{report.failed} chunks were not acknowledged: {report.first_error}"
        )


@click.group(help="Blobs in storage and PostgreSQL.")
def blobs() -> None:
    pass


@blobs.command(
    "sweep",
    help="Find (and with --apply delete) orphan objects, ownerless blobs and blobs that no "
    "assembled file references (docs/blob-lifecycle.md).",
)
@click.option(
    "--older-than",
    default="24h",
    show_default=True,
    help="Window for crash leftovers: orphan objects and ownerless blobs older than this.",
)
@click.option(
    "--retention",
    default="24h",
    show_default=True,
    envvar="BLOB_RETENTION",
    show_envvar=True,
    help="Owned blobs that no assembled file or unfinished assemble references are deleted "
    "once older than this (longer than 12h).",
)
@click.option("--apply", "apply_changes", is_flag=True, help="Delete; without it, only report.")
@click.option("--storage-url", help="Blob storage URL (default: BLOB_STORAGE_URL).")
@click.option(
    "--metrics-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the sweep's figures here in Prometheus text format (textfile collector).",
)
def blobs_sweep(
    older_than: str,
    retention: str,
    apply_changes: bool,
    storage_url: str | None,
    metrics_file: Path | None,
) -> None:
    window = parse_duration(older_than)
    try:
        kept_for = check_retention(parse_duration(retention))
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'--retention'") from None
    settings = Settings.from_env()
    pool = create_pool(settings, name="blobs-sweep")
    storage = open_blob_storage(settings, storage_url)
    try:
        report = find_garbage(pool, storage, window, retention=kept_for)
        _echo_garbage(report)
        if apply_changes:
            delete_garbage(pool, storage, report, window, retention=kept_for)
            click.echo(
                f"deleted objects={report.deleted_objects} "
                f"ownerless={report.deleted_ownerless_blobs} "
                f"unassembled={report.deleted_unassembled_blobs}"
            )
        else:
            click.echo(
                f"would delete objects={len(report.orphan_objects)} "
                f"ownerless={len(report.ownerless_blobs)} "
                f"unassembled={len(report.unassembled_blobs)} (dry run; --apply deletes)"
            )
        if metrics_file is not None:
            write_sweep_metrics(metrics_file, report)
    finally:
        storage.close()
        pool.close()


def _echo_garbage(report: SweepReport) -> None:
    for stored in report.orphan_objects:
        click.echo(
            f"orphan object     {stored.path}  {stored.size} bytes  {stored.modified.isoformat()}"
        )
    for blob in report.ownerless_blobs:
        click.echo(f"ownerless blob    {blob.id}  {blob.path}  {blob.timestamp.isoformat()}")
    for blob in report.unassembled_blobs:
        click.echo(f"unassembled blob  {blob.id}  {blob.path}  {blob.timestamp.isoformat()}")
