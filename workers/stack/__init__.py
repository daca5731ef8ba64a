"""The local stack: Kafka, PostgreSQL and Redis on 127.0.0.1, run without Docker.

`stack_up` starts whatever is not running (installing and downloading on the first run),
`stack_status` health-checks every service and `stack_down` stops what `stack_up` started.
Services the user pointed elsewhere (`KAFKA_BOOTSTRAP_SERVERS`, `DATABASE_URL`, `REDIS_URL`)
are "external": only health-checked, never started or stopped.

Kafka is one broker, or a cluster of three after `stack_up(..., brokers=3)` (recorded in the
state dir, so later runs without `brokers` see the same cluster); every broker is a service
of its own (`workers.stack.kafka_layout`, docs/operations.md, A 3-broker cluster).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from workers.common.local_kafka import BROKER_COUNTS, record_brokers, recorded_brokers
from workers.common.settings import Settings
from workers.stack.errors import StackError
from workers.stack.kafka import KafkaService
from workers.stack.kafka_layout import layout_for
from workers.stack.locks import stack_lock
from workers.stack.logs import tail
from workers.stack.paths import StackPaths
from workers.stack.ports import port_open, port_user
from workers.stack.postgres import PostgresService
from workers.stack.redis import RedisService
from workers.stack.service import LOCALHOST, Echo, Service, ServiceStatus

__all__ = [
    "ServiceStatus",
    "StackError",
    "format_status",
    "kafka_note",
    "stack_down",
    "stack_status",
    "stack_up",
]

log = logging.getLogger(__name__)


def kafka_services(settings: Settings, brokers: int | None = None) -> list[KafkaService]:
    """One service per Kafka node: of `brokers`, else of the layout the state dir records.

    An external Kafka is one service that health-checks `KAFKA_BOOTSTRAP_SERVERS`.
    """
    if "kafka" in settings.external_services:
        brokers = 1
    layout = layout_for(settings, brokers)
    return [KafkaService(settings, layout, node) for node in layout.nodes]


def services(settings: Settings) -> list[Service]:
    paths = StackPaths.under(settings.state_dir)
    return [
        *kafka_services(settings),
        PostgresService(settings, paths),
        RedisService(settings, paths),
    ]


def format_status(status: ServiceStatus) -> str:
    """One aligned line per service: name, state, URL and detail."""
    line = f"{status.name:<9} {status.state:<8} {status.url}"
    return f"{line}  ({status.detail})" if status.detail else line


def kafka_note(settings: Settings) -> str | None:
    """For a cluster, the line naming every broker for `KAFKA_BOOTSTRAP_SERVERS`."""
    if "kafka" in settings.external_services:
        return None
    layout = layout_for(settings)
    if layout.brokers == 1:
        return None
    servers = layout.bootstrap_servers
    return f"{'kafka':<9} {layout.brokers} brokers: KAFKA_BOOTSTRAP_SERVERS={servers}"


def _is_external(settings: Settings, service: Service) -> bool:
    return service.component in settings.external_services


def _status(settings: Settings, service: Service) -> ServiceStatus:
    problem = service.probe()
    if _is_external(settings, service):
        if problem is None:
            return ServiceStatus(service.name, "external", service.url, "not managed by the stack")
        return ServiceStatus(service.name, "down", service.url, f"external: {problem}")
    pid = service.own_pid()
    if problem is None:
        detail = f"pid {pid}" if pid is not None else "answering, but not started by this stack"
        return ServiceStatus(service.name, "running", service.url, detail)
    if pid is not None:
        detail = f"pid {pid} does not answer: {problem}"
    else:
        taken = [port for port in service.ports if port_open(LOCALHOST, port)]
        detail = (
            f"not running; port {taken[0]} is used by {port_user(taken[0])}"
            if taken
            else "not running"
        )
    return ServiceStatus(service.name, "down", service.url, detail)


def stack_status(settings: Settings) -> list[ServiceStatus]:
    """Health-check every service (nothing is started or stopped)."""
    return [_status(settings, service) for service in services(settings)]


@dataclass
class _Pending:
    service: Service
    started: float
    launched: bool
    deadline: float


def stack_up(settings: Settings, echo: Echo, brokers: int | None = None) -> list[ServiceStatus]:
    """Start every local service that is not running and wait until all answer.

    Idempotent: running services are only health-checked. Echoes one line per service;
    raises `StackError` (after echoing) when any service could not be brought up.
    `brokers` (1 or 3) chooses the Kafka layout and records it for later runs; `None` keeps
    the recorded one (one broker when none was recorded).
    """
    paths = StackPaths.under(settings.state_dir)
    results: dict[str, ServiceStatus] = {}
    failures: list[str] = []
    pending: list[_Pending] = []
    with stack_lock(paths, echo):
        if brokers is not None:
            _choose_brokers(settings, brokers)
        all_services = services(settings)
        # Phase 1, one service after the other (apt and Maven must not run concurrently):
        # decide, prepare and launch. Nothing waits for readiness here, so the JVM, the
        # postmaster and Redis boot in parallel.
        for service in all_services:
            started = time.monotonic()
            try:
                outcome = _begin(settings, service, echo)
            except (StackError, OSError) as error:
                failures.append(f"{service.name}: {error}")
                results[service.name] = _failed(service, started, "could not start")
                continue
            if isinstance(outcome, ServiceStatus):
                results[service.name] = _timed(outcome, started)
                if outcome.state == "down":
                    failures.append(f"{service.name}: {outcome.detail}")
            else:
                deadline = time.monotonic() + service.ready_timeout
                pending.append(_Pending(service, started, outcome, deadline))
        # Phase 2: wait for what was launched (or found running but not answering yet).
        for item, status, failure in _wait_for(pending):
            results[item.service.name] = status
            if failure is not None:
                failures.append(failure)
    statuses = [results[service.name] for service in all_services]
    for status in statuses:
        echo(format_status(status))
    note = kafka_note(settings)
    if note is not None:
        echo(note)
    if failures:
        raise StackError("\n".join(failures))
    return statuses


def _choose_brokers(settings: Settings, brokers: int) -> None:
    """Record the Kafka layout to run; refuse to switch while the other one runs."""
    if "kafka" in settings.external_services:
        raise StackError(
            "--brokers sets up the stack's own Kafka, but KAFKA_BOOTSTRAP_SERVERS points at "
            "another one; unset it to run the stack's"
        )
    wanted = layout_for(settings, brokers)
    if recorded_brokers(settings.state_dir) == brokers:
        return
    for other in BROKER_COUNTS:
        if other == brokers:
            continue
        running = [
            f"{service.name} pid {pid}"
            for service in kafka_services(settings, other)
            if (pid := service.own_pid()) is not None
        ]
        if running:
            raise StackError(
                f"the stack runs Kafka with {other} broker{'s' if other > 1 else ''} "
                f"({', '.join(running)}); stop it with `workers stack down`, then run "
                f"`workers stack up --brokers {brokers}`. Each layout keeps its own data "
                f"(the {brokers}-broker one in {wanted.directory})"
            )
    record_brokers(settings.state_dir, brokers)
    log.info("the stack's Kafka is now %d broker(s)", brokers)


def _wait_for(
    pending: list[_Pending],
) -> Iterator[tuple[_Pending, ServiceStatus, str | None]]:
    """Poll every pending service in turn until each answers, fails or runs out of time."""
    waiting = list(pending)
    while waiting:
        for item in list(waiting):
            service = item.service
            try:
                problem = service.poll_ready()
            except (StackError, OSError) as error:
                waiting.remove(item)
                yield item, _failed(service, item.started, "not ready"), f"{service.name}: {error}"
                continue
            now = time.monotonic()
            if problem is None:
                waiting.remove(item)
                verb = "started" if item.launched else "became ready"
                detail = f"pid {service.own_pid()}, {verb} in {now - item.started:.1f} s"
                yield item, ServiceStatus(service.name, "running", service.url, detail), None
            elif now >= item.deadline:
                waiting.remove(item)
                failure = (
                    f"{service.name}: not ready within {service.ready_timeout:.0f} s ({problem}); "
                    f"the last lines of {service.log_file}:\n{tail(service.log_file)}"
                )
                yield item, _failed(service, item.started, "not ready"), failure
        if waiting:
            time.sleep(0.2)


def _begin(settings: Settings, service: Service, echo: Echo) -> ServiceStatus | bool:
    """The status of a service that needs no start; else launch it and say whether it was.

    `True`: launched now, `False`: our process runs but does not answer yet (wait for it).
    """
    if _is_external(settings, service):
        return _status(settings, service)
    pid = service.own_pid()
    if pid is not None:
        if service.probe() is None:
            return ServiceStatus(
                service.name, "running", service.url, f"pid {pid}, already running"
            )
        log.info("%s (pid %d) runs but does not answer yet; waiting for it", service.name, pid)
        return False
    for port in service.ports:
        if port_open(LOCALHOST, port):
            raise StackError(
                f"port {port} on {LOCALHOST} is already in use by {port_user(port)}, which this "
                f"stack did not start (state dir {settings.state_dir}); stop it, or set "
                f"{service.url_variable} to use an existing {service.component} instead"
            )
    service.prepare(echo)
    service.launch()
    return True


def _timed(status: ServiceStatus, started: float) -> ServiceStatus:
    took = time.monotonic() - started
    return ServiceStatus(status.name, status.state, status.url, f"{status.detail}, {took:.2f} s")


def _failed(service: Service, started: float, what: str) -> ServiceStatus:
    took = time.monotonic() - started
    return ServiceStatus(service.name, "down", service.url, f"{what} after {took:.1f} s")


def stack_down(settings: Settings, echo: Echo) -> None:
    """Stop the services this stack started; external ones and strangers are left alone.

    They stop concurrently: the brokers of a cluster must shut down together, since a
    broker left alone after its quorum lost the majority waits minutes for the approval
    of its controlled shutdown.
    """
    paths = StackPaths.under(settings.state_dir)
    with stack_lock(paths, echo):
        all_services = services(settings)
        managed = [service for service in all_services if not _is_external(settings, service)]
        with ThreadPoolExecutor(max_workers=max(len(managed), 1)) as pool:
            outcomes = dict(zip(managed, pool.map(_stop, managed), strict=True))
    failures: list[str] = []
    for service in all_services:
        if service not in outcomes:
            echo(f"{service.name:<9} external, left alone")
            continue
        line, failure = outcomes[service]
        echo(line)
        if failure is not None:
            failures.append(failure)
    if failures:
        raise StackError("\n".join(failures))


def _stop(service: Service) -> tuple[str, str | None]:
    """Stop one service: the line to echo, and the failure if it could not be stopped."""
    started = time.monotonic()
    try:
        stopped = service.stop()
    except (StackError, OSError) as error:
        return f"{service.name:<9} could not be stopped", f"{service.name}: {error}"
    if stopped:
        return f"{service.name:<9} stopped in {time.monotonic() - started:.1f} s", None
    return f"{service.name:<9} not running", None
