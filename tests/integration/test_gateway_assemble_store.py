"""The task rows of the assemble endpoints on the real PostgreSQL (docs/gateway.md,
Assemble): however many requests race for one file, one of them claims it; and the blob
lookup refreshes the chunks it finds once they are 12 h old (docs/blob-lifecycle.md)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import timedelta

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from harness.gateway import sha1
from tests.support.gateway_assemble import Org, make_org, tasks
from workers.common.projects import create_organization
from workers.common.settings import Settings
from workers.common.storage import random_blob_path
from workers.gateway.assemble_store import PostgresAssembleStore
from workers.gateway.assemble_types import FileRequest, Target

pytestmark = pytest.mark.integration

RACERS = 20


@contextlib.asynccontextmanager
async def racing_store(settings: Settings) -> AsyncIterator[PostgresAssembleStore]:
    """The gateway's store on a pool of `RACERS` open connections, one per racer."""
    async with AsyncConnectionPool(
        settings.database_url,
        min_size=RACERS,
        max_size=RACERS,
        open=False,
        kwargs={"autocommit": True},
    ) as pool:
        await pool.wait()
        yield PostgresAssembleStore(pool)


def _race(
    settings: Settings, target: Target, requests: Sequence[FileRequest]
) -> list[dict[str, int]]:
    """`RACERS` claims of `requests` at once, each on its own connection."""

    async def race() -> list[dict[str, int]]:
        async with racing_store(settings) as store:
            return list(
                await asyncio.gather(*(store.claim(target, requests) for _ in range(RACERS)))
            )

    return asyncio.run(race())


def _file(name: str = "hello") -> FileRequest:
    return FileRequest(sha1(os.urandom(16)), name, (sha1(b"a"), sha1(b"b")), debug_id=None)


def _target(org: Org) -> Target:
    return Target(org.id, "dif", project_id=org.project_id)


def test_one_of_many_concurrent_claims_inserts_the_row(settings: Settings) -> None:
    org = make_org(settings)
    files = [_file(), _file()]
    claims = _race(settings, _target(org), files)
    for file in files:
        winners = [claim[file.checksum] for claim in claims if file.checksum in claim]
        (row,) = tasks(settings, org, file.checksum)
        assert winners == [row["id"]]
        assert row["state"] == "created"


def test_a_forgotten_error_is_claimed_again_once_and_a_recent_one_never(
    settings: Settings,
) -> None:
    org = make_org(settings)
    recent, forgotten = _file(), _file("renamed")
    target = _target(org)
    _race(settings, target, [recent, forgotten])
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        connection.execute(
            "UPDATE assemble_tasks SET state = 'error', detail = 'bad', date_updated = CASE "
            "WHEN checksum = %s THEN now() - interval '11 minutes' ELSE now() END "
            "WHERE organization_id = %s",
            (forgotten.checksum, org.id),
        )
    claims = _race(settings, target, [recent, forgotten])
    assert [claim for claim in claims if recent.checksum in claim] == []
    (row,) = tasks(settings, org, forgotten.checksum)
    assert [claim[forgotten.checksum] for claim in claims if claim] == [row["id"]]
    assert (row["state"], row["detail"], row["name"]) == ("created", None, "renamed")
    (kept,) = tasks(settings, org, recent.checksum)
    assert (kept["state"], kept["detail"]) == ("error", "bad")


def test_release_removes_only_rows_still_created(settings: Settings) -> None:
    org = make_org(settings)
    waiting, started = _file(), _file()
    target = _target(org)
    (claimed, *_) = [claim for claim in _race(settings, target, [waiting, started]) if claim]
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        connection.execute(
            "UPDATE assemble_tasks SET state = 'assembling' WHERE checksum = %s",
            (started.checksum,),
        )

    async def release() -> None:
        async with AsyncConnectionPool(
            settings.database_url, min_size=1, open=False, kwargs={"autocommit": True}
        ) as pool:
            await PostgresAssembleStore(pool).release(list(claimed.values()))

    asyncio.run(release())
    assert tasks(settings, org, waiting.checksum) == []
    assert [row["state"] for row in tasks(settings, org, started.checksum)] == ["assembling"]


def test_a_created_task_whose_request_was_lost_is_claimed_again_once_and_a_recent_one_never(
    settings: Settings,
) -> None:
    org = make_org(settings)
    recent, lost = _file(), _file("renamed")
    target = _target(org)
    _race(settings, target, [recent, lost])
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        connection.execute(
            "UPDATE assemble_tasks SET date_updated = now() - interval '11 minutes' "
            "WHERE organization_id = %s AND checksum = %s",
            (org.id, lost.checksum),
        )
        claims = _race(settings, target, [recent, lost])
        (updated_ago,) = connection.execute(
            "SELECT now() - date_updated FROM assemble_tasks "
            "WHERE organization_id = %s AND checksum = %s",
            (org.id, lost.checksum),
        ).fetchone() or (None,)
    assert [claim for claim in claims if recent.checksum in claim] == []
    (row,) = tasks(settings, org, lost.checksum)
    assert [claim[lost.checksum] for claim in claims if claim] == [row["id"]]
    assert (row["state"], row["name"]) == ("created", "renamed")
    assert updated_ago is not None
    assert updated_ago < timedelta(minutes=1)
    assert [row["state"] for row in tasks(settings, org, recent.checksum)] == ["created"]


@pytest.fixture
def blob_org(settings: Settings) -> Iterator[tuple[psycopg.Connection, int, list[int]]]:
    """A connection, an organization without projects, and the ids of the blobs a test
    inserts (deleted afterwards)."""
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        organization = create_organization(connection, f"asm-{uuid.uuid4().hex[:10]}", None)
        blob_ids: list[int] = []
        try:
            yield connection, organization.id, blob_ids
        finally:
            connection.execute("DELETE FROM blobs WHERE id = ANY(%s)", (blob_ids,))
            connection.execute("DELETE FROM organizations WHERE id = %s", (organization.id,))


def _blob(
    connection: psycopg.Connection, owner: int, age: timedelta, blob_ids: list[int]
) -> tuple[str, int]:
    """(checksum, size) of a new blob row `owner` owns, `age` old (no storage object: the
    gateway never reads one)."""
    data = os.urandom(64)
    blob_id, checksum = uuid.uuid4().int % 2**62, hashlib.sha1(data).hexdigest()
    connection.execute(
        "INSERT INTO blobs (id, path, size, checksum, timestamp) "
        "VALUES (%s, %s, %s, %s, now() - %s)",
        (blob_id, random_blob_path(), len(data), checksum, age),
    )
    connection.execute(
        "INSERT INTO blob_owners (blob_id, organization_id) VALUES (%s, %s)", (blob_id, owner)
    )
    blob_ids.append(blob_id)
    return checksum, len(data)


def test_the_blob_lookup_refreshes_the_owned_blobs_twelve_hours_old(
    settings: Settings, blob_org: tuple[psycopg.Connection, int, list[int]]
) -> None:
    connection, org_id, blob_ids = blob_org
    stranger = create_organization(connection, f"asm-{uuid.uuid4().hex[:10]}", None).id
    aged = [_blob(connection, org_id, timedelta(hours=13), blob_ids) for _ in range(3)]
    young = _blob(connection, org_id, timedelta(hours=1), blob_ids)
    theirs = _blob(connection, stranger, timedelta(hours=13), blob_ids)
    absent = hashlib.sha1(os.urandom(8)).hexdigest()
    checksums = [checksum for checksum, _ in (*aged, young, theirs)] + [absent]

    async def look_up() -> list[dict[str, int]]:
        async with racing_store(settings) as store:
            # Racing requests list overlapping chunks in different orders.
            orders = [checksums[index:] + checksums[:index] for index in range(RACERS)]
            return list(
                await asyncio.gather(*(store.owned_sizes(org_id, order) for order in orders))
            )

    try:
        answers = asyncio.run(look_up())
        rows = connection.execute(
            "SELECT checksum, now() - timestamp FROM blobs WHERE id = ANY(%s)", (blob_ids,)
        ).fetchall()
        ages: dict[str, timedelta] = {str(checksum): age for checksum, age in rows}
    finally:
        connection.execute("DELETE FROM organizations WHERE id = %s", (stranger,))
    assert answers == [dict([*aged, young])] * RACERS
    assert [ages[checksum] < timedelta(minutes=1) for checksum, _ in aged] == [True] * 3
    assert timedelta(minutes=59) < ages[young[0]] < timedelta(hours=2)
    assert ages[theirs[0]] > timedelta(hours=12)
