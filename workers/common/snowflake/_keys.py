"""Redis key names of the snowflake generators.

Every key starts with `workers:snowflake:` and carries a Redis Cluster hash tag (`{...}`), so
that all keys one Lua script touches hash to the same slot.
"""

from __future__ import annotations

import re
from typing import Final

KEY_PREFIX: Final = "workers:snowflake:"
_KEY_PART: Final = re.compile(r"[A-Za-z0-9_.:-]{1,100}")


def validate_key_part(kind: str, value: str) -> str:
    """A caller-chosen key or namespace: 1..100 of `A-Z a-z 0-9 _ . : -`, else ValueError."""
    if _KEY_PART.fullmatch(value) is None:
        raise ValueError(
            f"snowflake {kind} {value!r} must be 1 to 100 characters of A-Z a-z 0-9 _ . : -"
        )
    return value
