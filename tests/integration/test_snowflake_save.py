"""`save_with_snowflake_retry` against the real PostgreSQL, on a scratch table per test."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from workers.common.settings import Settings
from workers.common.snowflake import (
    MAX_RETRY_MESSAGE,
    MaxSnowflakeRetryError,
    NoAvailableId,
    save_with_snowflake_retry,
)

pytestmark = pytest.mark.integration

Connection = psycopg.Connection[Any]


@pytest.fixture
def connection() -> Iterator[Connection]:
    with psycopg.connect(Settings.from_env().database_url, autocommit=True) as connected:
        yield connected


@pytest.fixture
def table(connection: Connection) -> Iterator[str]:
    """A scratch table `(id BIGINT PRIMARY KEY, name TEXT UNIQUE)`, dropped afterwards."""
    name = f"snowflake_save_{uuid.uuid4().hex[:12]}"
    connection.execute(
        sql.SQL("CREATE TABLE {} (id BIGINT PRIMARY KEY, name TEXT NOT NULL UNIQUE)").format(
            sql.Identifier(name)
        )
    )
    yield name
    connection.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))


class RiggedGenerator:
    """Returns the given ids in order and counts the calls."""

    def __init__(self, ids: list[int]) -> None:
        self._ids = iter(ids)
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return next(self._ids)


def inserter(connection: Connection, table: str, name: str) -> Callable[[int], object]:
    statement = sql.SQL("INSERT INTO {} (id, name) VALUES (%s, %s)").format(sql.Identifier(table))
    return lambda new_id: connection.execute(statement, (new_id, name))


def prefill(connection: Connection, table: str, ids: list[int]) -> None:
    statement = sql.SQL("INSERT INTO {} (id, name) VALUES (%s, %s)").format(sql.Identifier(table))
    with connection.cursor() as cursor:
        cursor.executemany(statement, [(i, f"taken-{i}") for i in ids])


def names(connection: Connection, table: str) -> dict[int, str]:
    rows = connection.execute(
        sql.SQL("SELECT id, name FROM {}").format(sql.Identifier(table))
    ).fetchall()
    return {row[0]: row[1] for row in rows}


def test_collisions_are_retried_with_fresh_ids_until_one_is_free(
    connection: Connection, table: str
) -> None:
    prefill(connection, table, [101, 102, 103])
    generator = RiggedGenerator([101, 102, 103, 104, 105])
    saved = save_with_snowflake_retry(connection, inserter(connection, table, "new"), generator)
    assert saved == 104
    assert generator.calls == 4
    assert names(connection, table)[104] == "new"


def test_inside_an_outer_transaction_the_savepoints_keep_it_usable(
    connection: Connection, table: str
) -> None:
    prefill(connection, table, [7])
    with connection.transaction():
        connection.execute(
            sql.SQL("INSERT INTO {} (id, name) VALUES (1, 'first')").format(sql.Identifier(table))
        )
        saved = save_with_snowflake_retry(
            connection, inserter(connection, table, "second"), RiggedGenerator([7, 8])
        )
    assert saved == 8
    assert names(connection, table) == {7: "taken-7", 1: "first", 8: "second"}


def test_always_colliding_fails_after_five_attempts_with_the_spec_message(
    connection: Connection, table: str
) -> None:
    prefill(connection, table, [1, 2, 3, 4, 5, 6])
    generator = RiggedGenerator([1, 2, 3, 4, 5, 6])
    with pytest.raises(MaxSnowflakeRetryError) as error:
        save_with_snowflake_retry(connection, inserter(connection, table, "x"), generator)
    assert str(error.value) == "Max allowed ID retry reached. Please try again in a second"
    assert str(error.value) == MAX_RETRY_MESSAGE
    assert isinstance(error.value.__cause__, psycopg.errors.UniqueViolation)
    assert generator.calls == 5
    assert "x" not in names(connection, table).values()


def test_another_unique_violation_is_raised_at_once(connection: Connection, table: str) -> None:
    prefill(connection, table, [50])
    generator = RiggedGenerator([60, 61, 62])
    with pytest.raises(psycopg.errors.UniqueViolation) as error:
        save_with_snowflake_retry(connection, inserter(connection, table, "taken-50"), generator)
    assert error.value.diag.constraint_name == f"{table}_name_key"
    assert generator.calls == 1


def test_an_explicit_constraint_name_is_honoured(connection: Connection, table: str) -> None:
    prefill(connection, table, [1])
    with pytest.raises(psycopg.errors.UniqueViolation):
        save_with_snowflake_retry(
            connection,
            inserter(connection, table, "y"),
            RiggedGenerator([1, 2]),
            id_constraint="some_other_pkey",
        )
    saved = save_with_snowflake_retry(
        connection,
        inserter(connection, table, "y"),
        RiggedGenerator([1, 2]),
        id_constraint=f"{table}_pkey",
    )
    assert saved == 2


def test_a_custom_named_primary_key_is_recognised_in_a_temp_table(
    connection: Connection,
) -> None:
    with connection.transaction():
        connection.execute(
            "CREATE TEMP TABLE scratch_ids (id BIGINT CONSTRAINT my_ids PRIMARY KEY, "
            "name TEXT) ON COMMIT DROP"
        )
        connection.execute("INSERT INTO scratch_ids VALUES (1, 'a')")
        saved = save_with_snowflake_retry(
            connection,
            lambda new_id: connection.execute(
                "INSERT INTO scratch_ids VALUES (%s, 'b')", (new_id,)
            ),
            RiggedGenerator([1, 9]),
        )
    assert saved == 9


def test_generator_errors_propagate(connection: Connection, table: str) -> None:
    def exhausted() -> int:
        raise NoAvailableId("no available ID for the test")

    with pytest.raises(NoAvailableId, match="no available ID for the test"):
        save_with_snowflake_retry(connection, inserter(connection, table, "z"), exhausted)
    with pytest.raises(ValueError, match="max_attempts must be >= 1"):
        save_with_snowflake_retry(
            connection, inserter(connection, table, "z"), exhausted, max_attempts=0
        )


def test_a_non_autocommit_connection_is_left_idle_and_committed(table: str) -> None:
    with psycopg.connect(Settings.from_env().database_url) as connection:
        prefill_statement = sql.SQL("INSERT INTO {} (id, name) VALUES (3, 'taken')").format(
            sql.Identifier(table)
        )
        with connection.transaction():
            connection.execute(prefill_statement)
        saved = save_with_snowflake_retry(
            connection, inserter(connection, table, "fresh"), RiggedGenerator([3, 4])
        )
        assert connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert saved == 4
    with psycopg.connect(Settings.from_env().database_url) as other:
        assert names(other, table) == {3: "taken", 4: "fresh"}
