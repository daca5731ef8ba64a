"""Every error the snowflake package raises, in one hierarchy.

`SnowflakeError` is the base. `IdGeneratorUnavailable` and its subclasses mean "no id right
now, none was issued, trying again later may work"; `InvalidSnowflakeId` means the caller
passed a value that is not an id of the layout (it is also a `ValueError`).
"""

from __future__ import annotations


class SnowflakeError(Exception):
    """Base of every error raised by `workers.common.snowflake`."""


class InvalidSnowflakeId(SnowflakeError, ValueError):
    """A value is not an id of the layout, or a part is out of its range."""


class IdGeneratorUnavailable(SnowflakeError):
    """The generator cannot issue an id now; nothing was issued."""


class RedisUnavailableError(IdGeneratorUnavailable):
    """Redis, which coordinates uniqueness, did not answer (or answered with an error)."""


class NoAvailableId(IdGeneratorUnavailable):
    """Sentry layout: every sequence number of the probed seconds is taken."""


class NoFreeWorkerId(IdGeneratorUnavailable):
    """Leased layout: every worker id of the namespace is leased by another generator."""


class LeaseLostError(IdGeneratorUnavailable):
    """Leased layout: the worker-id lease was lost or may have expired; re-acquiring."""


class ClockMovedBackwardsError(IdGeneratorUnavailable):
    """Leased layout: the wall clock is further behind the last issued id than we wait for."""


class MaxSnowflakeRetryError(SnowflakeError):
    """A save collided on the id's primary key on every attempt.

    Sentry answers it with HTTP 409 (docs/reference.md, Snowflake ids).
    """
