"""PostgreSQL access: connection pools and the versioned migrations.

Migrations are the `NNNN_name.sql` files beside this module, applied in order by
`workers migrate`. Each runs in its own transaction together with its row in
`schema_migrations`, under an advisory lock so that several pods migrating at once apply
each file exactly once. An applied file that was edited afterwards is an error, not a
silent skip.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg_pool import ConnectionPool

from workers.common.settings import Settings

logger = logging.getLogger(__name__)

MIGRATIONS_PACKAGE = "workers.common.migrations"
_MIGRATION_FILE = re.compile(r"(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql")
# An arbitrary constant that identifies "the fleet's migrations" among advisory locks.
_MIGRATION_LOCK_KEY = 7_305_117_001


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def create_pool(settings: Settings, name: str = "workers") -> ConnectionPool:
    """A pool opened and checked; close it with `pool.close()`."""
    pool = ConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=settings.database_pool_max_size,
        name=name,
        open=False,
        kwargs={"application_name": name},
    )
    pool.open(wait=True, timeout=30.0)
    return pool


def load_migrations() -> list[Migration]:
    migrations: list[Migration] = []
    for entry in resources.files(MIGRATIONS_PACKAGE).iterdir():
        match = _MIGRATION_FILE.fullmatch(entry.name)
        if match is None:
            continue
        migrations.append(
            Migration(int(match["version"]), match["name"], entry.read_text(encoding="utf-8"))
        )
    migrations.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version: {versions}")
    return migrations


def apply_migrations(conninfo: str, migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply every pending migration; returns the ones applied now (empty when up to date)."""
    wanted = load_migrations() if migrations is None else migrations
    applied_now: list[Migration] = []
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK_KEY,))
        try:
            connection.execute(
                """
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version INTEGER PRIMARY KEY,
                    name TEXT NOT NULL,
                    checksum CHAR(64) NOT NULL,
                    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                )
                """
            )
            rows = connection.execute(
                "SELECT version, name, checksum FROM schema_migrations"
            ).fetchall()
            done = {version: (name, checksum) for version, name, checksum in rows}
            for migration in wanted:
                if migration.version in done:
                    name, checksum = done[migration.version]
                    if checksum.strip() != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.version:04d}_{name} was changed after it "
                            "was applied; add a new migration instead"
                        )
                    continue
                with connection.transaction():
                    connection.execute(migration.sql.encode())
                    connection.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                logger.info(
                    "migration applied",
                    extra={"version": migration.version, "migration": migration.name},
                )
                applied_now.append(migration)
        finally:
            connection.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK_KEY,))
    return applied_now
