"""Sentry-layout snowflake ids, bit-exact with Sentry's (docs/reference.md, Snowflake ids).

53 bits (a JavaScript number holds them exactly), most significant first:

| segment | bits | value |
|---|---|---|
| version | 5 | version 1 written MSB-0 (bit-reversed): `0b10000` = 16 |
| seconds since 2022-08-08T00:00:00Z | 32 | about 136 years |
| region | 12 | 0..4095 (0 = single region) |
| sequence | 4 | 0..15 |

`id = 16 << 48 | t << 16 | region << 4 | sequence`.

**Capacity: 16 ids per second per region (and per key), sustained.** A second whose 16
sequence numbers are spent is borrowed from the past: the generator takes the newest free
second among the current one and the 299 before it. Those 300 seconds are the reference's
look-back (`range(5 * 60)`) and match the counters' `EXPIRE 300`: probing a 301st second
would let its counter expire while it is still probed, restart at 0 and repeat ids. So a
burst can take 16 x 300 = 4800 ids from a fresh key, then 16 per second.

Fixes of the reference's weaknesses: the per-second counter is `INCR`ed and given its TTL in
one atomic Lua script (a crash can no longer leave a counter without TTL), the probing of
all 300 seconds happens inside that one script (one Redis round trip per id, however many
seconds are spent), and keys are namespaced:
`workers:snowflake:sentry:{<key>:<region>}:<seconds since the epoch>`. The hash tag keeps
one key's counters in one Redis Cluster slot; the script derives the probed keys from that
prefix, so it needs a standalone Redis or a Cluster that tolerates undeclared same-slot keys.

Counters live on Redis time (TTL) while seconds come from the caller's clock: a host whose
clock is more than a few seconds behind the others can meet an expired counter and repeat
an id. The database's primary key plus `save_with_snowflake_retry` is the real guard.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from redis import Redis
from redis.exceptions import RedisError

from workers.common.snowflake._keys import KEY_PREFIX, validate_key_part
from workers.common.snowflake.errors import (
    IdGeneratorUnavailable,
    InvalidSnowflakeId,
    NoAvailableId,
    RedisUnavailableError,
)

logger = logging.getLogger(__name__)

#: 2022-08-08T00:00:00Z, the Sentry snowflake epoch.
SENTRY_EPOCH_SECONDS: Final = 1_659_916_800
SENTRY_ID_BITS: Final = 53
#: Version 1 in 5 bits, written most-significant-bit-first: 0b10000.
SENTRY_VERSION_BITS_VALUE: Final = 16
TIMESTAMP_BITS: Final = 32
REGION_BITS: Final = 12
SEQUENCE_BITS: Final = 4
TIMESTAMP_SHIFT: Final = REGION_BITS + SEQUENCE_BITS
VERSION_SHIFT: Final = TIMESTAMP_SHIFT + TIMESTAMP_BITS
MAX_REGION: Final = (1 << REGION_BITS) - 1
MAX_SEQUENCE: Final = (1 << SEQUENCE_BITS) - 1
MAX_SECONDS: Final = (1 << TIMESTAMP_BITS) - 1
#: Seconds probed per id: the current one and the 299 before it.
LOOKBACK_SECONDS: Final = 300
#: TTL of a per-second counter, set on its first INCR only.
COUNTER_TTL_SECONDS: Final = 300

_VERSION: Final = SENTRY_VERSION_BITS_VALUE << VERSION_SHIFT

# ARGV: key prefix, current second, seconds to probe, counter TTL, highest sequence.
# Returns {second, sequence} of the first free slot, newest second first, or nil.
_NEXT_SEQUENCE_SCRIPT: Final = """
local prefix = ARGV[1]
local now = tonumber(ARGV[2])
local lookback = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local max_sequence = tonumber(ARGV[5])
for offset = 0, lookback - 1 do
  local second = now - offset
  if second < 0 then
    break
  end
  local key = prefix .. string.format('%d', second)
  local value = redis.call('INCR', key)
  if value == 1 then
    redis.call('EXPIRE', key, ttl)
  end
  if value <= max_sequence + 1 then
    return {second, value - 1}
  end
end
return false
"""


@dataclass(frozen=True)
class SentryIdParts:
    """A decoded Sentry-layout id."""

    timestamp: datetime
    region: int
    sequence: int

    @property
    def unix_seconds(self) -> int:
        return int(self.timestamp.timestamp())


def encode_sentry_id(unix_seconds: int, region: int, sequence: int) -> int:
    """The id of `unix_seconds` (UTC, whole seconds), `region` and `sequence`; validated."""
    seconds = unix_seconds - SENTRY_EPOCH_SECONDS
    if not 0 <= seconds <= MAX_SECONDS:
        raise InvalidSnowflakeId(
            f"timestamp {unix_seconds} is outside the Sentry layout's range "
            f"{SENTRY_EPOCH_SECONDS}..{SENTRY_EPOCH_SECONDS + MAX_SECONDS} (unix seconds)"
        )
    validate_region(region)
    if not 0 <= sequence <= MAX_SEQUENCE:
        raise InvalidSnowflakeId(f"sequence must be 0..{MAX_SEQUENCE}, got {sequence}")
    return _VERSION | seconds << TIMESTAMP_SHIFT | region << SEQUENCE_BITS | sequence


def decode_sentry_id(snowflake_id: int) -> SentryIdParts:
    """Timestamp (UTC), region and sequence of a Sentry-layout id, else InvalidSnowflakeId."""
    if isinstance(snowflake_id, bool) or not isinstance(snowflake_id, int):
        raise InvalidSnowflakeId(f"a snowflake id is an int, got {type(snowflake_id).__name__}")
    if not 0 < snowflake_id < 1 << SENTRY_ID_BITS:
        raise InvalidSnowflakeId(
            f"{snowflake_id} is not a Sentry-layout id: those are positive and below 2**53"
        )
    version = snowflake_id >> VERSION_SHIFT
    if version != SENTRY_VERSION_BITS_VALUE:
        raise InvalidSnowflakeId(
            f"{snowflake_id} is not a Sentry-layout id: its version bits (48-52) are "
            f"{version}, not {SENTRY_VERSION_BITS_VALUE}"
        )
    seconds = (snowflake_id >> TIMESTAMP_SHIFT) & MAX_SECONDS
    return SentryIdParts(
        timestamp=datetime.fromtimestamp(SENTRY_EPOCH_SECONDS + seconds, tz=UTC),
        region=(snowflake_id >> SEQUENCE_BITS) & MAX_REGION,
        sequence=snowflake_id & MAX_SEQUENCE,
    )


def validate_region(region: int) -> int:
    if isinstance(region, bool) or not isinstance(region, int) or not 0 <= region <= MAX_REGION:
        raise InvalidSnowflakeId(
            f"snowflake region must be an integer 0..{MAX_REGION}, got {region!r}"
        )
    return region


class SentrySnowflakeGenerator:
    """Issues Sentry-layout ids for one key and region, one Redis round trip per id.

    Thread-safe and process-safe: all coordination is the atomic script in Redis. `clock`
    returns unix seconds (injectable for tests).
    """

    def __init__(
        self,
        redis: Redis,
        key: str,
        region: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = validate_key_part("key", key)
        self._region = validate_region(region)
        self._clock = clock
        self._prefix = f"{KEY_PREFIX}sentry:{{{key}:{region}}}:"
        self._script = redis.register_script(_NEXT_SEQUENCE_SCRIPT)

    @property
    def region(self) -> int:
        return self._region

    def counter_key(self, seconds_since_epoch: int) -> str:
        """The Redis key of one second's sequence counter (for tests and operators)."""
        return f"{self._prefix}{seconds_since_epoch}"

    def generate(self) -> int:
        now = int(self._clock()) - SENTRY_EPOCH_SECONDS
        if not 0 <= now <= MAX_SECONDS:
            raise IdGeneratorUnavailable(
                f"the clock reads {now + SENTRY_EPOCH_SECONDS} unix seconds, outside the "
                "Sentry layout's range (2022-08-08 plus 2**32 seconds)"
            )
        try:
            reply = self._script(
                args=[self._prefix, now, LOOKBACK_SECONDS, COUNTER_TTL_SECONDS, MAX_SEQUENCE]
            )
        except RedisError as error:
            raise RedisUnavailableError(
                f"cannot generate a Sentry-layout id for key {self._key!r}: "
                f"Redis failed ({type(error).__name__}: {error})"
            ) from error
        if reply is None:
            raise NoAvailableId(
                f"no available ID for key {self._key!r} region {self._region}: all "
                f"{MAX_SEQUENCE + 1} sequence numbers of each of the last {LOOKBACK_SECONDS} "
                f"seconds are taken (capacity {MAX_SEQUENCE + 1} ids per second per region); "
                "try again in a second"
            )
        second, sequence = int(reply[0]), int(reply[1])
        if second != now:
            logger.debug(
                "sentry snowflake borrowed an earlier second",
                extra={
                    "snowflake_key": self._key,
                    "region": self._region,
                    "seconds_back": now - second,
                },
            )
        return _VERSION | second << TIMESTAMP_SHIFT | self._region << SEQUENCE_BITS | sequence
