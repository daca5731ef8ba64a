"""Snowflake ids: the Sentry layout (16/s/region) and the leased, high-throughput blob layout.

- `SentrySnowflakeGenerator`: Sentry-layout ids for low-volume rows (projects), one Redis round
  trip (one atomic Lua script) per id.
- `LeasedSnowflakeGenerator` over `WorkerIdLeases`: blob ids, millions per second per
  process, Redis only to lease a worker id.
- `save_with_snowflake_retry`: insert with a fresh id until the primary key accepts it.
- `decode_sentry_id`, `decode_leased_id`, `decode_snowflake_id` (layout detected).
"""

from workers.common.snowflake.errors import (
    ClockMovedBackwardsError,
    IdGeneratorUnavailable,
    InvalidSnowflakeId,
    LeaseLostError,
    MaxSnowflakeRetryError,
    NoAvailableId,
    NoFreeWorkerId,
    RedisUnavailableError,
    SnowflakeError,
)
from workers.common.snowflake.layouts import SnowflakeLayout, decode_snowflake_id, detect_layout
from workers.common.snowflake.lease import (
    Clocks,
    LeaseStore,
    WorkerIdLeases,
    WorkerLease,
    lease_redis_client,
)
from workers.common.snowflake.leased_layout import (
    LeasedIdParts,
    LeasedSnowflakeGenerator,
    decode_leased_id,
    encode_leased_id,
)
from workers.common.snowflake.save import (
    MAX_RETRY_MESSAGE,
    MAX_SNOWFLAKE_ATTEMPTS,
    save_with_snowflake_retry,
)
from workers.common.snowflake.sentry_layout import (
    SentryIdParts,
    SentrySnowflakeGenerator,
    decode_sentry_id,
    encode_sentry_id,
)

__all__ = [
    "MAX_RETRY_MESSAGE",
    "MAX_SNOWFLAKE_ATTEMPTS",
    "ClockMovedBackwardsError",
    "Clocks",
    "IdGeneratorUnavailable",
    "InvalidSnowflakeId",
    "LeaseLostError",
    "LeaseStore",
    "LeasedIdParts",
    "LeasedSnowflakeGenerator",
    "MaxSnowflakeRetryError",
    "NoAvailableId",
    "NoFreeWorkerId",
    "RedisUnavailableError",
    "SentryIdParts",
    "SentrySnowflakeGenerator",
    "SnowflakeError",
    "SnowflakeLayout",
    "WorkerIdLeases",
    "WorkerLease",
    "decode_leased_id",
    "decode_sentry_id",
    "decode_snowflake_id",
    "detect_layout",
    "encode_leased_id",
    "encode_sentry_id",
    "lease_redis_client",
    "save_with_snowflake_retry",
]
