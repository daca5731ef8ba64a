"""`workers files list --org SLUG [--kind debug|bundle]` and `workers files show ID`."""

from __future__ import annotations

import click
import psycopg

from workers.common.projects import ProjectStoreError, find_organization
from workers.common.settings import Settings
from workers.files.details import show_file
from workers.files.queries import STORED_KINDS, FileId, FileNotFound, list_files
from workers.files.render import as_json, list_lines, show_lines


def _file_id(ctx: click.Context, param: click.Parameter, value: str) -> FileId:
    try:
        return FileId.parse(value)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from None


@click.group(help="Debug files and artifact bundles, assembled or on their way.")
def files() -> None:
    pass


@files.command(
    "list", help="An organization's files, newest first, with the state of each assemble."
)
@click.option("--org", "organization", required=True, help="Organization slug.")
@click.option("--kind", type=click.Choice(sorted(STORED_KINDS)), help="Only this kind.")
@click.option("--json", "as_machine_json", is_flag=True, help="Print JSON.")
def files_list(organization: str, kind: str | None, as_machine_json: bool) -> None:
    settings = Settings.from_env()
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        try:
            organization_id = find_organization(connection, organization).id
        except ProjectStoreError as error:
            raise click.ClickException(str(error)) from None
        found = list_files(connection, organization_id, kind)
    if as_machine_json:
        click.echo(as_json(found))
    else:
        click.echo("\n".join(list_lines(found)))


@files.command(
    "show",
    help="One file: state, objects or bundle index, and its chunks' blobs. "
    "ID is as `files list` shows it: N (an assemble task) or file:N (a file without one).",
)
@click.argument("wanted", metavar="ID", callback=_file_id)
@click.option("--json", "as_machine_json", is_flag=True, help="Print JSON.")
def files_show(wanted: FileId, as_machine_json: bool) -> None:
    settings = Settings.from_env()
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        try:
            details = show_file(connection, wanted)
        except FileNotFound as error:
            raise click.ClickException(str(error)) from None
    click.echo(as_json(details) if as_machine_json else "\n".join(show_lines(details)))
