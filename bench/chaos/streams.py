"""The live streams a chaos scenario runs its workers on, made lazily message by message.

- `BillingStream`: usage buckets, each for a project id of its own (its index), so an outcome
  names the bucket it bills; every `custom_every`-th message is instead a custom-metric bucket
  for one of the scenario's real projects, so the first-custom-metric flag (PostgreSQL and
  Redis) is on the path of every few batches.
- `BlobStream`: 4 KiB chunk-upload events of one organization; every tenth message repeats
  the chunk of five messages earlier (deduplication on the path). A chunk's bytes are a
  function of its index, so the repeat is byte-identical.
"""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from collections.abc import Sequence
from typing import Final, overload

import psycopg

from harness.billing import custom_bucket, usage_bucket
from harness.paced import Outbound
from workers.billing.counting import SPANS_USAGE_METRIC_ID, TRANSACTIONS_USAGE_METRIC_ID
from workers.common.chunk_uploads import encode_headers
from workers.common.projects import create_organization
from workers.common.settings import Settings

#: The organization usage buckets name (no row needed: usage does not touch the database).
USAGE_ORG: Final = 77
CHUNK_BYTES: Final = 4096
REPEAT_EVERY: Final = 10
REPEAT_DISTANCE: Final = 5


class BillingStream(Sequence[bytes]):
    def __init__(
        self, length: int, org_id: int, custom_projects: Sequence[int], custom_every: int
    ) -> None:
        self.__length = length
        self.__org_id = org_id
        self.__projects = custom_projects
        self.__every = custom_every

    def __len__(self) -> int:
        return self.__length

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[bytes]: ...
    def __getitem__(self, index: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.__length))]
        project = self.custom_project(index)
        if project is not None:
            return custom_bucket(self.__org_id, project)
        metric = TRANSACTIONS_USAGE_METRIC_ID if index % 2 else SPANS_USAGE_METRIC_ID
        return usage_bucket(metric, float(index % 9 + 1), USAGE_ORG, index)

    def custom_project(self, index: int) -> int | None:
        """The project a custom bucket at `index` flags; None for a usage bucket."""
        if not self.__projects or index % self.__every != self.__every // 2:
            return None
        return self.__projects[(index // self.__every) % len(self.__projects)]


class BlobStream(Sequence[Outbound]):
    def __init__(self, length: int, org_id: int, seed: int) -> None:
        self.__length = length
        self.__org_id = org_id
        self.__seed = seed
        self.__uploaded_at_ms = int(time.time() * 1000)

    def __len__(self) -> int:
        return self.__length

    @overload
    def __getitem__(self, index: int) -> Outbound: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Outbound]: ...
    def __getitem__(self, index: int | slice) -> Outbound | Sequence[Outbound]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.__length))]
        data = self.chunk(index)
        checksum = hashlib.sha1(data, usedforsecurity=False).hexdigest()
        headers = encode_headers(self.__org_id, checksum, "identity", self.__uploaded_at_ms)
        return Outbound(data, checksum.encode(), list(headers))

    def chunk(self, index: int) -> bytes:
        if index % REPEAT_EVERY == REPEAT_EVERY - 1 and index >= REPEAT_DISTANCE:
            index -= REPEAT_DISTANCE
        return random.Random(self.__seed * 1_000_003 + index).randbytes(CHUNK_BYTES)


def create_org_with_projects(settings: Settings, projects: int) -> tuple[int, list[int]]:
    """A fresh organization and `projects` projects of it (ids random, rows inserted at once)."""
    base = random.randrange(2**40, 2**50)
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        org = create_organization(connection, f"chaos-{uuid.uuid4().hex[:10]}", None)
        connection.execute(
            "INSERT INTO projects (id, organization_id, name, slug) "
            "SELECT %s + n, %s, 'chaos-' || n, 'chaos-' || n FROM generate_series(0, %s - 1) n",
            (base, org.id, projects),
        )
    return org.id, [base + n for n in range(projects)]
