"""Serving `/metrics`, and prometheus-client's multiprocess mode (see the package doc)."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

#: The variable that switches prometheus-client to multiprocess mode at import time.
MULTIPROC_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
_SHUTDOWN_JOIN_SECONDS: Final = 5.0


class ScrapeWatch(Collector):
    """Tells when a scrape that began after `wait_for_next` was called has been answered.

    Served with the metrics (it collects nothing): a request's collection notes the current
    generation in its handler thread, and the server reports the request `answered` from the
    same thread once the response is written and the connection closed.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._generation = 0
        self._answered = 0
        self._request = threading.local()

    def collect(self) -> Iterable[Metric]:
        with self._changed:
            self._request.generation = self._generation
        return ()

    def answered(self) -> None:
        generation = getattr(self._request, "generation", None)
        self._request.generation = None
        if generation is None:
            return
        with self._changed:
            self._answered = max(self._answered, generation)
            self._changed.notify_all()

    def wait_for_next(self, timeout: float) -> bool:
        """Wait until a scrape that begins from now on is answered; False after `timeout`."""
        with self._changed:
            self._generation += 1
            target = self._generation
            return self._changed.wait_for(lambda: self._answered >= target, timeout)


@dataclass(frozen=True)
class MetricsServer:
    """A running `/metrics` HTTP server (a daemon thread); `shutdown()` stops it."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread
    _scrapes: ScrapeWatch

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host  # noqa: S104
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/metrics"

    def wait_for_next_scrape(self, timeout: float) -> bool:
        """Keep serving until one more scrape is answered (a process about to exit lets
        Prometheus see what it counted last); False when none came within `timeout`."""
        return self._scrapes.wait_for_next(timeout)

    def shutdown(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(_SHUTDOWN_JOIN_SECONDS)


class _Delegate(Collector):
    """Collects everything another registry holds (so it can be served with more)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        return self._registry.collect()


def served_registry(registry: CollectorRegistry) -> CollectorRegistry:
    """`registry` plus prometheus-client's `process_*` metrics of this (the serving) process.

    `process_start_time_seconds` tells restarts apart (the `WorkersProcessRestarting` alert);
    CPU, memory and open files come along. `registry` itself is left unchanged.
    """
    served = CollectorRegistry()
    served.register(_Delegate(registry))
    ProcessCollector(registry=served)
    return served


def start_metrics_server(
    port: int,
    registry: CollectorRegistry,
    host: str = "0.0.0.0",  # noqa: S104 - Prometheus scrapes the pod from outside
) -> MetricsServer:
    """Serve `registry` and this process's `process_*` metrics on `http://host:port/metrics`.

    Port 0 picks a free port (see `.port`).
    """
    scrapes = ScrapeWatch()
    served = served_registry(registry)
    served.register(scrapes)
    server, thread = start_http_server(port, addr=host, registry=served)
    close_request = server.shutdown_request

    def answered(request: Any) -> None:
        # Called by the request's handler thread once the response is written.
        try:
            close_request(request)
        finally:
            scrapes.answered()

    server.shutdown_request = answered  # type: ignore[method-assign]
    return MetricsServer(
        host=host, port=int(server.server_port), _server=server, _thread=thread, _scrapes=scrapes
    )


def prepare_multiprocess_dir(path: Path) -> None:
    """Create `path`, or empty it of a previous run's `*.db` files (required at every start).

    Only `*.db` files are removed, so pointing it at a wrong directory cannot delete anything
    else. Call it in the parent before any child starts.
    """
    path.mkdir(parents=True, exist_ok=True)
    for db_file in path.glob("*.db"):
        db_file.unlink(missing_ok=True)


def multiprocess_registry(path: Path) -> CollectorRegistry:
    """A registry aggregating every process's metric files in `path` (the parent serves it)."""
    registry = CollectorRegistry()
    _multiprocess.MultiProcessCollector(registry, path=str(path))  # type: ignore[no-untyped-call]
    return registry


def mark_process_dead(pid: int, path: Path) -> None:
    """Drop a dead child's live gauges (`live*` modes); its counters and histograms stay."""
    _multiprocess.mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]
