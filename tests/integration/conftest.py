"""Fixtures shared by the integration tests: the real local stack's clients."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from redis import Redis

from workers.common.database import apply_migrations
from workers.common.settings import Settings


@pytest.fixture(scope="session", autouse=True)
def migrated_database() -> None:
    """Every integration test runs against the current schema (a fresh stack has none)."""
    apply_migrations(Settings.from_env().database_url)


@pytest.fixture
def settings() -> Settings:
    return Settings.from_env()


@pytest.fixture
def redis_client(settings: Settings) -> Iterator[Redis]:
    client: Redis = Redis.from_url(settings.redis_url)
    yield client
    client.close()


@pytest.fixture
def connection(settings: Settings) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the stack's database."""
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        yield connection
