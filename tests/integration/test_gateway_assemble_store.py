"""The task rows of the assemble endpoints on the real PostgreSQL (docs/gateway.md,
Assemble): however many requests race for one file, one of them claims it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from harness.gateway import sha1
from tests.support.gateway_assemble import Org, make_org, tasks
from workers.common.settings import Settings
from workers.gateway.assemble_store import PostgresAssembleStore
from workers.gateway.assemble_types import FileRequest, Target

pytestmark = pytest.mark.integration

RACERS = 20


def _race(
    settings: Settings, target: Target, requests: Sequence[FileRequest]
) -> list[dict[str, int]]:
    """`RACERS` claims of `requests` at once, each on its own connection."""

    async def race() -> list[dict[str, int]]:
        async with AsyncConnectionPool(
            settings.database_url,
            min_size=RACERS,
            max_size=RACERS,
            open=False,
            kwargs={"autocommit": True},
        ) as pool:
            await pool.wait()
            store = PostgresAssembleStore(pool)
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
