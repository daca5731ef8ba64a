"""Migrations against the real PostgreSQL and topic creation against the real Kafka."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from confluent_kafka.admin import AdminClient
from psycopg import sql

from harness.kafka import unique_name
from tests.support.echo_worker import build_definition
from workers.common.database import (
    Migration,
    MigrationError,
    apply_migrations,
    create_pool,
    load_migrations,
)
from workers.common.kafka_config import admin_configuration
from workers.common.registry import ConsumerRegistry
from workers.common.settings import Settings
from workers.common.topics import TopicSpec, create_topics, fleet_topics

pytestmark = pytest.mark.integration


@pytest.fixture
def scratch_database(settings: Settings) -> Iterator[str]:
    """A new, empty database on the stack's server; dropped afterwards."""
    name = f"workers_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(settings.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base, _, _ = settings.database_url.rpartition("/")
    yield f"{base}/{name}"
    with psycopg.connect(settings.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _tables(conninfo: str) -> set[str]:
    with psycopg.connect(conninfo) as connection:
        rows = connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {row[0] for row in rows}


def test_migrations_create_the_spec_tables_once_and_are_recorded(scratch_database: str) -> None:
    applied = apply_migrations(scratch_database)
    assert [m.version for m in applied] == [m.version for m in load_migrations()]
    assert {"organizations", "projects", "blobs", "blob_owners", "schema_migrations"} <= _tables(
        scratch_database
    )
    assert apply_migrations(scratch_database) == []
    with psycopg.connect(scratch_database) as connection:
        versions = connection.execute("SELECT version FROM schema_migrations").fetchall()
        assert [row[0] for row in versions] == [m.version for m in applied]
        # The fixed constraints (docs/reference.md, Blob store): unique checksum, unique owner
        # per organization.
        connection.execute(
            "INSERT INTO blobs (id, path, size, checksum) VALUES (1, 'a/b/c', 3, %s)",
            ("a" * 40,),
        )
        with pytest.raises(psycopg.errors.UniqueViolation):
            connection.execute(
                "INSERT INTO blobs (id, path, size, checksum) VALUES (2, 'd/e/f', 3, %s)",
                ("a" * 40,),
            )
        connection.rollback()
        connection.execute("INSERT INTO organizations (slug, name) VALUES ('acme', 'Acme')")
        flags = connection.execute(
            "INSERT INTO projects (id, organization_id, name, slug) "
            "SELECT 5, id, 'Backend', 'backend' FROM organizations RETURNING flags"
        ).fetchone()
        assert flags == (10,)
        with pytest.raises(psycopg.errors.UniqueViolation):
            connection.execute(
                "INSERT INTO projects (id, organization_id, name, slug) "
                "SELECT 6, id, 'Other', 'BACKEND' FROM organizations"
            )


def test_concurrent_migrations_apply_each_file_exactly_once(scratch_database: str) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: apply_migrations(scratch_database), range(4)))
    assert sorted(len(result) for result in results) == [0, 0, 0, len(load_migrations())]


def test_an_edited_migration_is_refused(scratch_database: str) -> None:
    first = load_migrations()[0]
    apply_migrations(scratch_database)
    edited = Migration(first.version, first.name, first.sql + "\n-- edited\n")
    with pytest.raises(MigrationError, match="was changed after it was applied"):
        apply_migrations(scratch_database, [edited])


def test_a_failing_migration_leaves_nothing_behind(scratch_database: str) -> None:
    broken = Migration(1, "broken", "CREATE TABLE half_done (id INT); SELECT 1/0;")
    with pytest.raises(psycopg.errors.DivisionByZero):
        apply_migrations(scratch_database, [broken])
    assert "half_done" not in _tables(scratch_database)
    with psycopg.connect(scratch_database) as connection:
        assert connection.execute("SELECT count(*) FROM schema_migrations").fetchone() == (0,)


def test_pool_serves_connections(settings: Settings) -> None:
    pool = create_pool(settings, name="test")
    try:
        with pool.connection() as connection:
            assert connection.execute("SELECT 1").fetchone() == (1,)
    finally:
        pool.close()


def test_topics_create_is_idempotent_and_reports_existing(settings: Settings) -> None:
    name = unique_name("topic")
    specs = [TopicSpec(name, 3, {"max.message.bytes": "16777216"})]
    assert [(r.name, r.state, r.partitions) for r in create_topics(settings, specs)] == [
        (name, "created", 3)
    ]
    again = create_topics(settings, [TopicSpec(name, 6)])
    assert [(r.state, r.partitions) for r in again] == [("exists", 3)]
    assert again[0].warning is not None
    assert "fewer than 6" in again[0].warning
    admin = AdminClient(admin_configuration(settings))
    metadata = admin.list_topics(name, timeout=10)
    assert len(metadata.topics[name].partitions) == 3


def test_fleet_topics_for_a_registry_are_all_created(settings: Settings) -> None:
    definition = build_definition(unique_name("fleet-in"))
    specs = fleet_topics(ConsumerRegistry([definition]), 2)
    create_topics(settings, specs)
    assert {r.state for r in create_topics(settings, specs)} == {"exists"}
