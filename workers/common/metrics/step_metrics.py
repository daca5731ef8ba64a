"""Per-step metrics the workers record on their hot path.

    fleet = FleetMetrics(registry, "billing")
    decode = fleet.step("decode")          # once, when the strategy is built
    decode.message_in()                    # per message (~0.3 µs; see below)
    with decode.time():
        ...
    decode.invalid("invalid_json")
    decode.message_out()

Series (all with `worker` and `step` labels):

- `workers_step_messages_in_total`, `workers_step_messages_out_total`
- `workers_step_messages_invalid_total{reason}`
- `workers_step_latency_seconds` histogram, 10 µs … 10 s
- `workers_batch_size_messages` histogram, 1 … 100 000
- `workers_dlq_messages_total{worker,reason}` (no `step`): messages sent to the DLQ topic.
- `workers_dlq_limit_exceeded_total{worker,limit}` (no `step`): a process stopped because its
  invalid messages went beyond a DLQ limit (`workers.common.dlq_limit`); both `limit` series
  are exported at 0 from the start.

Reasons are short fixed codes (`invalid_json`, `unknown_project`, ...), never messages:
a reason is truncated to 64 characters and must match `[a-z0-9_]+`, otherwise it is recorded
as `"other"` (warning logged once per step); each step accepts at most
`max_reasons` distinct codes, later new ones also become `"other"`. Step names must match
`[a-z0-9_]{1,64}` (a `ValueError` at setup, not on the hot path).

Every labelled child is created once and cached, so a call is one `Counter.inc`.
"""

from __future__ import annotations

import logging
import threading
from time import perf_counter
from types import TracebackType
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram

from workers.common.metrics._common import (
    MESSAGE_COUNT_BUCKETS,
    OTHER_REASON,
    STEP_LATENCY_BUCKETS,
    LogOnce,
    sanitize_reason,
    validate_name,
)

logger = logging.getLogger(__name__)

#: Distinct reason codes per step (and for the DLQ counter), `"other"` included.
DEFAULT_MAX_REASONS: Final = 32
#: The `limit` label of `workers_dlq_limit_exceeded_total` (`--dlq-max-invalid-ratio`,
#: `--dlq-max-consecutive-invalid`).
DLQ_LIMIT_INVALID_RATIO: Final = "max_invalid_ratio"
DLQ_LIMIT_CONSECUTIVE_INVALID: Final = "max_consecutive_invalid"
DLQ_LIMITS: Final = (DLQ_LIMIT_INVALID_RATIO, DLQ_LIMIT_CONSECUTIVE_INVALID)


class _ReasonCounter:
    """A counter child per sanitised reason code, with a bounded number of codes."""

    __slots__ = ("_children", "_counter", "_label_prefix", "_lock", "_log_once", "_max", "_what")

    def __init__(
        self, counter: Counter, label_prefix: tuple[str, ...], max_reasons: int, what: str
    ) -> None:
        self._counter = counter
        self._label_prefix = label_prefix
        self._max = max(1, max_reasons)
        self._what = what
        self._children: dict[str, Counter] = {}
        self._lock = threading.Lock()
        self._log_once = LogOnce(logger, max_keys=4)

    def inc(self, reason: str, n: int) -> None:
        child = self._children.get(reason)
        if child is None:
            child = self._resolve(reason)
        child.inc(n)

    def _resolve(self, reason: str) -> Counter:
        code = sanitize_reason(reason)
        if code == OTHER_REASON and reason != OTHER_REASON:
            self._log_once(
                "invalid",
                logging.WARNING,
                "%s: reason %r is not a short [a-z0-9_] code; recorded as %r",
                self._what,
                reason[:200],
                OTHER_REASON,
            )
        with self._lock:
            child = self._children.get(code)
            if child is None:
                if len(self._children) >= self._max - 1 and code != OTHER_REASON:
                    self._log_once(
                        "too-many",
                        logging.WARNING,
                        "%s: more than %d reason codes; %r recorded as %r",
                        self._what,
                        self._max,
                        code,
                        OTHER_REASON,
                    )
                    code = OTHER_REASON
                    child = self._children.get(code)
                if child is None:
                    child = self._counter.labels(*self._label_prefix, code)
                    self._children[code] = child
            # Only well-formed codes are cached under their raw text (bounded by the cap).
            if code == reason:
                self._children[reason] = child
        return child


class _StepTimer:
    """Context manager observing the elapsed time of its block into a histogram."""

    __slots__ = ("_histogram", "_start")

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._start = 0.0

    def __enter__(self) -> None:
        self._start = perf_counter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._histogram.observe(perf_counter() - self._start)


class StepMetrics:
    """The metrics of one step of one worker. Get it from `FleetMetrics.step`."""

    __slots__ = ("_batch_size", "_invalid", "_latency", "_messages_in", "_messages_out", "name")

    def __init__(
        self,
        name: str,
        messages_in: Counter,
        messages_out: Counter,
        invalid: _ReasonCounter,
        latency: Histogram,
        batch_size: Histogram,
    ) -> None:
        self.name = name
        self._messages_in = messages_in
        self._messages_out = messages_out
        self._invalid = invalid
        self._latency = latency
        self._batch_size = batch_size

    def message_in(self, n: int = 1) -> None:
        """`n` messages entered the step."""
        self._messages_in.inc(n)

    def message_out(self, n: int = 1) -> None:
        """`n` messages left the step (forwarded or produced)."""
        self._messages_out.inc(n)

    def invalid(self, reason: str, n: int = 1) -> None:
        """`n` messages were rejected; `reason` is a short fixed code like `invalid_json`."""
        self._invalid.inc(reason, n)

    def observe_latency(self, seconds: float) -> None:
        """Record the time one message (or one batch) spent in the step."""
        self._latency.observe(seconds)

    def time(self) -> _StepTimer:
        """`with step.time(): ...` records the block's duration as the step latency."""
        return _StepTimer(self._latency)

    def observe_batch_size(self, n: int) -> None:
        """Record the size, in messages, of a batch the step handled."""
        self._batch_size.observe(n)


class FleetMetrics:
    """The fleet's own metrics for one worker; one instance per process and registry."""

    def __init__(
        self,
        registry: CollectorRegistry,
        worker: str,
        *,
        max_reasons: int = DEFAULT_MAX_REASONS,
    ) -> None:
        self._worker = worker
        self._registry = registry
        self._max_reasons = max_reasons
        labels = ("worker", "step")
        self._messages_in = Counter(
            "workers_step_messages_in_total",
            "Messages that entered a step.",
            labels,
            registry=registry,
        )
        self._messages_out = Counter(
            "workers_step_messages_out_total",
            "Messages that left a step.",
            labels,
            registry=registry,
        )
        self._messages_invalid = Counter(
            "workers_step_messages_invalid_total",
            "Messages a step rejected, by reason code.",
            (*labels, "reason"),
            registry=registry,
        )
        self._latency = Histogram(
            "workers_step_latency_seconds",
            "Time spent in a step per message or batch.",
            labels,
            unit="seconds",
            buckets=STEP_LATENCY_BUCKETS,
            registry=registry,
        )
        self._batch_size = Histogram(
            "workers_batch_size_messages",
            "Messages per batch handled by a step.",
            labels,
            unit="messages",
            buckets=MESSAGE_COUNT_BUCKETS,
            registry=registry,
        )
        dlq_messages = Counter(
            "workers_dlq_messages_total",
            "Messages sent to the dead-letter topic, by reason code.",
            ("worker", "reason"),
            registry=registry,
        )
        self._dlq = _ReasonCounter(dlq_messages, (worker,), max_reasons, f"{worker} DLQ")
        dlq_limit_exceeded = Counter(
            "workers_dlq_limit_exceeded_total",
            "Times a consumer process stopped because its invalid messages went beyond a "
            "DLQ limit, by limit.",
            ("worker", "limit"),
            registry=registry,
        )
        self._dlq_limit_exceeded = {
            limit: dlq_limit_exceeded.labels(worker, limit) for limit in DLQ_LIMITS
        }
        self._steps: dict[str, StepMetrics] = {}
        self._lock = threading.Lock()

    @property
    def worker(self) -> str:
        return self._worker

    @property
    def registry(self) -> CollectorRegistry:
        """Where a worker registers metrics of its own (with a `worker` label)."""
        return self._registry

    def step(self, name: str) -> StepMetrics:
        """The metrics of step `name` (`[a-z0-9_]{1,64}`); the same object on every call."""
        step = self._steps.get(name)
        if step is not None:
            return step
        validate_name("step", name)
        with self._lock:
            step = self._steps.get(name)
            if step is None:
                labels = (self._worker, name)
                step = StepMetrics(
                    name,
                    self._messages_in.labels(*labels),
                    self._messages_out.labels(*labels),
                    _ReasonCounter(
                        self._messages_invalid,
                        labels,
                        self._max_reasons,
                        f"{self._worker} step {name}",
                    ),
                    self._latency.labels(*labels),
                    self._batch_size.labels(*labels),
                )
                self._steps[name] = step
        return step

    def dlq_message(self, reason: str, n: int = 1) -> None:
        """`n` messages were sent to the DLQ topic; `reason` is a short fixed code."""
        self._dlq.inc(reason, n)

    def dlq_limit_exceeded(self, limit: str) -> None:
        """The process stops: an invalid message went beyond `limit` (one of `DLQ_LIMITS`)."""
        self._dlq_limit_exceeded[limit].inc()
