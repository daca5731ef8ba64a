"""Structured logging: one JSON object per line in production, readable lines locally.

Fields passed with `extra={...}` become keys of the JSON object. Never pass payload bytes or
credentials: log sizes, offsets, reasons and ids instead.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import orjson

from workers.common.settings import LogFormat

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD_RECORD_ATTRIBUTES and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        document.update(_extra_fields(record))
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(document, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = _extra_fields(record)
        if extra:
            line += "  " + " ".join(f"{key}={value}" for key, value in extra.items())
        return line


def configure_logging(level: str, log_format: LogFormat, stream: TextIO | None = None) -> None:
    """Install one handler on the root logger (replacing earlier ones: safe to call again)."""
    output = stream if stream is not None else sys.stderr
    chosen = log_format
    if chosen == "auto":
        chosen = "console" if output.isatty() else "json"
    handler = logging.StreamHandler(output)
    handler.setFormatter(JsonFormatter() if chosen == "json" else ConsoleFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # librdkafka's own log lines arrive through this logger at DEBUG; keep them at the
    # chosen level but stop the chatty client loggers from drowning ours.
    logging.getLogger("kafka").setLevel(max(logging.getLevelName(level), logging.INFO))
