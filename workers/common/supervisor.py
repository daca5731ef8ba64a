"""`--processes N`: N consumer processes of one worker, supervised by a parent.

Each child is a full Kafka group member (its own consumer, chain and DLQ producer), so the
partitions of the input topic are shared among them exactly as among pods. Children are
started with the `spawn` method and `PROMETHEUS_MULTIPROC_DIR` set, so their metrics are
written to files that the parent aggregates and serves on `--metrics-port`.

Liveness: child i touches `<healthcheck-file>.<i>`; the parent touches `<healthcheck-file>`
only while every child's file is fresh, so one stuck child fails the probe.
Shutdown: SIGTERM/SIGINT are forwarded to every child, which shuts down gracefully. If a
child dies on its own, the others are stopped too and the parent exits non-zero, so the
orchestrator restarts the whole pod rather than running with fewer members than asked.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import sys
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from prometheus_client import CollectorRegistry

from workers.common.dlq_limit import DlqLimitExceeded
from workers.common.logs import configure_logging
from workers.common.metrics import (
    mark_process_dead,
    multiprocess_registry,
    prepare_multiprocess_dir,
    start_metrics_server,
)
from workers.common.registry import load_registry
from workers.common.runner import RunOptions, run_worker_process
from workers.common.settings import Settings
from workers.common.signals import handling_shutdown_signals

logger = logging.getLogger(__name__)

SUPERVISOR_TICK_SECONDS = 0.5
# Extra time, beyond the join timeout, a child gets to close its consumer and flush.
CHILD_SHUTDOWN_GRACE_SECONDS = 30.0


def _child_main(registry_loader: str, name: str, options: RunOptions, settings: Settings) -> None:
    configure_logging(settings.log_level, settings.log_format)
    definition = load_registry(registry_loader).get(name)
    try:
        run_worker_process(definition, options, settings, CollectorRegistry(), serve_metrics=False)
    except DlqLimitExceeded as exceeded:
        # The same error `workers run` prints with one process, instead of a traceback.
        print(f"Error: {exceeded}", file=sys.stderr)
        sys.exit(1)


def child_healthcheck_file(healthcheck_file: Path, index: int) -> Path:
    return healthcheck_file.with_name(f"{healthcheck_file.name}.{index}")


class Supervisor:
    def __init__(
        self,
        registry_loader: str,
        name: str,
        options: RunOptions,
        settings: Settings,
        multiprocess_dir: Path,
    ) -> None:
        self.__registry_loader = registry_loader
        self.__name = name
        self.__options = options
        self.__settings = settings
        self.__multiprocess_dir = multiprocess_dir
        self.__children: list[BaseProcess] = []
        self.__stopping = False

    def run(self) -> int:
        prepare_multiprocess_dir(self.__multiprocess_dir)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.__multiprocess_dir)
        server = None
        if self.__options.metrics_port is not None:
            server = start_metrics_server(
                self.__options.metrics_port, multiprocess_registry(self.__multiprocess_dir)
            )
        try:
            with handling_shutdown_signals(self.__request_stop):
                self.__start_children()
                return self.__supervise()
        finally:
            if server is not None:
                server.shutdown()

    def __start_children(self) -> None:
        context = multiprocessing.get_context("spawn")
        for index in range(self.__options.processes):
            healthcheck = self.__options.healthcheck_file
            options = dataclasses.replace(
                self.__options,
                processes=1,
                process_index=index,
                metrics_port=None,
                healthcheck_file=child_healthcheck_file(healthcheck, index)
                if healthcheck
                else None,
            )
            child = context.Process(
                target=_child_main,
                args=(self.__registry_loader, self.__name, options, self.__settings),
                name=f"{self.__name}-{index}",
            )
            child.start()
            self.__children.append(child)
        logger.info(
            "consumer processes started",
            extra={"worker": self.__name, "pids": [child.pid for child in self.__children]},
        )

    def __request_stop(self, signum: int, frame: FrameType | None) -> None:
        logger.info("shutdown requested", extra={"signal": signal.Signals(signum).name})
        self.__stop_children()

    def __stop_children(self) -> None:
        if self.__stopping:
            return
        self.__stopping = True
        for child in self.__children:
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)

    def __supervise(self) -> int:
        exit_code = 0
        deadline: float | None = None
        while True:
            alive = [child for child in self.__children if child.is_alive()]
            for child in self.__children:
                if not child.is_alive() and child.pid is not None and child.exitcode is not None:
                    mark_process_dead(child.pid, self.__multiprocess_dir)
            crashed = [
                child
                for child in self.__children
                if child.exitcode not in (None, 0) or (child.exitcode == 0 and not self.__stopping)
            ]
            if crashed and not self.__stopping:
                logger.error(
                    "consumer process exited unexpectedly; stopping the others",
                    extra={"worker": self.__name, "exit_codes": [c.exitcode for c in crashed]},
                )
                exit_code = 1
                self.__stop_children()
            if not alive:
                return exit_code
            if self.__stopping:
                if deadline is None:
                    deadline = (
                        time.monotonic()
                        + self.__options.join_timeout_seconds
                        + CHILD_SHUTDOWN_GRACE_SECONDS
                    )
                elif time.monotonic() > deadline:
                    for child in alive:
                        logger.error("killing consumer process", extra={"pid": child.pid})
                        child.kill()
                    exit_code = 1
            self.__touch_healthcheck()
            alive[0].join(SUPERVISOR_TICK_SECONDS)

    def __touch_healthcheck(self) -> None:
        path = self.__options.healthcheck_file
        if path is None or self.__stopping:
            return
        stale_after = self.__options.max_poll_interval_ms / 1000.0
        now = time.time()
        for index in range(len(self.__children)):
            child_file = child_healthcheck_file(path, index)
            try:
                if now - child_file.stat().st_mtime > stale_after:
                    return
            except FileNotFoundError:
                return
        path.touch()
