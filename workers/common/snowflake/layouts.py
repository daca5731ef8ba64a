"""Which layout an id has, and decoding an id of either layout.

The rule: an id below 2**53 is a Sentry-layout id (and must carry the version bits 16 in
bits 48-52), an id from 2**53 to 2**63 - 1 is a blob-layout id. There is no ambiguous case:
blob-layout timestamps start at 2**31 ms after the epoch precisely so that every blob id is
>= 2**53. Anything else (zero, negative, >= 2**63, or below 2**53 with other version bits)
is `InvalidSnowflakeId`.
"""

from __future__ import annotations

from enum import StrEnum

from workers.common.snowflake.errors import InvalidSnowflakeId
from workers.common.snowflake.leased_layout import (
    LEASED_ID_BITS,
    MIN_LEASED_ID,
    LeasedIdParts,
    decode_leased_id,
)
from workers.common.snowflake.sentry_layout import SentryIdParts, decode_sentry_id


class SnowflakeLayout(StrEnum):
    SENTRY = "sentry"
    BLOB = "blob"


def detect_layout(snowflake_id: int) -> SnowflakeLayout:
    if isinstance(snowflake_id, bool) or not isinstance(snowflake_id, int):
        raise InvalidSnowflakeId(f"a snowflake id is an int, got {type(snowflake_id).__name__}")
    if 0 < snowflake_id < MIN_LEASED_ID:
        return SnowflakeLayout.SENTRY
    if MIN_LEASED_ID <= snowflake_id < 1 << LEASED_ID_BITS:
        return SnowflakeLayout.BLOB
    raise InvalidSnowflakeId(
        f"{snowflake_id} is not a snowflake id: ids are positive and below 2**63"
    )


def decode_snowflake_id(
    snowflake_id: int, layout: SnowflakeLayout | None = None
) -> SentryIdParts | LeasedIdParts:
    """Decode with the given layout, or the detected one."""
    chosen = detect_layout(snowflake_id) if layout is None else layout
    if chosen is SnowflakeLayout.SENTRY:
        return decode_sentry_id(snowflake_id)
    return decode_leased_id(snowflake_id)
