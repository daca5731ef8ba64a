"""Small helpers shared by the metrics modules: log-once, label sanitising, buckets."""

from __future__ import annotations

import logging
import re
import threading
from typing import Final

from prometheus_client import values

# Histogram buckets, in base units. Each tuple is ascending; `+Inf` is added by the client.
#: Short in-process durations: 10 µs … 60 s (callbacks, strategy creation, batch submits).
DURATION_BUCKETS: Final = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    25.0,
    60.0,
)
#: Per-step processing latency: 10 µs … 10 s.
STEP_LATENCY_BUCKETS: Final = DURATION_BUCKETS[: DURATION_BUCKETS.index(10.0) + 1]
#: End-to-end ages (message timestamp → commit, produce → delivery): 1 ms … 1 h.
AGE_BUCKETS: Final = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)
#: Batch sizes in messages: 1 … 100 000.
MESSAGE_COUNT_BUCKETS: Final = (
    1.0,
    2.0,
    5.0,
    10.0,
    20.0,
    50.0,
    100.0,
    200.0,
    500.0,
    1000.0,
    2000.0,
    5000.0,
    10000.0,
    20000.0,
    50000.0,
    100000.0,
)
#: Batch sizes in bytes: 1 KiB … 1 GiB, powers of four.
BYTE_BUCKETS: Final = tuple(float(1024 * 4**i) for i in range(11))

#: Longest label value accepted for a reason code.
MAX_REASON_LENGTH: Final = 64
#: What every reason that is not a short fixed code becomes.
OTHER_REASON: Final = "other"
_REASON_PATTERN: Final = re.compile(r"[a-z0-9_]+")
_NAME_PATTERN: Final = re.compile(r"[a-z0-9_]{1,64}")


def sanitize_reason(reason: str) -> str:
    """A reason code as a label value: `[a-z0-9_]`, at most 64 characters, else `"other"`.

    The input is truncated to 64 characters first, so a long but well-formed code keeps its
    prefix. Anything with other characters (upper case, spaces, punctuation: typically an
    exception message that leaked in) becomes `"other"`.
    """
    truncated = reason[:MAX_REASON_LENGTH]
    if _REASON_PATTERN.fullmatch(truncated) is None:
        return OTHER_REASON
    return truncated


def validate_name(kind: str, name: str) -> str:
    """Step and worker-defined names are code constants: `[a-z0-9_]{1,64}` or ValueError."""
    if _NAME_PATTERN.fullmatch(name) is None:
        raise ValueError(f"{kind} name {name!r} must match [a-z0-9_]{{1,64}}")
    return name


def multiprocess_active() -> bool:
    """Whether this process's prometheus-client writes metric values to mmap files.

    Decided once, when `prometheus_client` is first imported, by `PROMETHEUS_MULTIPROC_DIR`.
    """
    return bool(getattr(values.ValueClass, "_multiprocess", False))


class LogOnce:
    """Logs a message the first time a key is seen; bounded so it can never grow forever."""

    __slots__ = ("_lock", "_logger", "_max_keys", "_seen")

    def __init__(self, logger: logging.Logger, max_keys: int = 1024) -> None:
        self._logger = logger
        self._max_keys = max_keys
        self._seen: set[object] = set()
        self._lock = threading.Lock()

    def __call__(
        self, key: object, level: int, message: str, *args: object, exc_info: bool = False
    ) -> None:
        with self._lock:
            if key in self._seen or len(self._seen) >= self._max_keys:
                return
            self._seen.add(key)
        self._logger.log(level, message, *args, exc_info=exc_info)
