"""`workers demo`, step by step (see the package docstring)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Final

from arroyo.backends.kafka import KafkaPayload
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from workers.common.database import apply_migrations
from workers.common.demo_hooks import DemoContext, DemoFeed
from workers.common.logs import configure_logging
from workers.common.registry import load_registry
from workers.common.settings import Settings
from workers.common.topics import create_topics, fleet_topics
from workers.demo.processes import (
    POLL_INTERVAL_SECONDS,
    DemoWorker,
    check_running,
    start_worker,
    stop,
)
from workers.demo.scrape import scrape
from workers.demo.summary import print_summary
from workers.demo.traffic import DemoProducer, demo_hooks
from workers.stack import StackError, stack_up

SAMPLE_SEED: Final = 42
METRICS_SETTLE_SECONDS: Final = 10.0
Produce = Callable[[str, Sequence[KafkaPayload]], int]
_PROGRESS_COLUMNS: Final = (
    TextColumn("{task.description}"),
    BarColumn(bar_width=20),
    MofNCompleteColumn(),
    TimeElapsedColumn(),
)


def _context(
    settings: Settings, worker: DemoWorker, messages: int, console: Console, produce: Produce
) -> DemoContext:
    return DemoContext(
        settings=settings,
        worker=worker.name,
        topic=worker.definition.topic,
        messages=messages,
        seed=SAMPLE_SEED,
        echo=lambda line: console.print(line, highlight=False, markup=False),
        produce=produce,
    )


def _not_producing(topic: str, _messages: Sequence[KafkaPayload]) -> int:
    raise RuntimeError(f"a summary hook produced to {topic}: only feeding hooks may")


def _wait_for_commits(
    settings: Settings, workers: list[DemoWorker], timeout: float, progress: Progress
) -> bool:
    tasks = {w.name: progress.add_task(f"{w.name} processed", total=w.produced) for w in workers}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = True
        for worker in workers:
            check_running(worker)
            processed = worker.processed(settings)
            progress.update(tasks[worker.name], completed=processed)
            done = done and processed >= worker.produced
        if done:
            return True
        time.sleep(POLL_INTERVAL_SECONDS)
    return False


def _settled_scrape(settings: Settings, worker: DemoWorker, context: DemoContext) -> str:
    """The worker's metrics, once they account for everything it committed to its outputs
    (or after `METRICS_SETTLE_SECONDS`)."""
    settled = worker.hooks.settled
    deadline = time.monotonic() + METRICS_SETTLE_SECONDS
    while True:
        text = scrape(worker.metrics_port)
        if settled is None or time.monotonic() > deadline:
            return text
        if settled(context, text, sum(worker.outputs(settings).values())):
            return text
        time.sleep(POLL_INTERVAL_SECONDS)


def _feed_all(
    settings: Settings,
    workers: list[DemoWorker],
    feed: Callable[[DemoWorker, DemoContext], DemoFeed | None],
    messages: int,
    timeout: float,
    console: Console,
    producer: DemoProducer,
) -> bool:
    """Feeds each worker (`feed` returns None for one it skips), then waits for its commits."""
    with Progress(*_PROGRESS_COLUMNS, console=console) as progress:
        fed = []
        for worker in workers:
            context = _context(
                settings,
                worker,
                messages,
                console,
                lambda topic, batch: producer.produce(topic, batch, progress),
            )
            sent = feed(worker, context)
            if sent is not None:
                worker.add(sent)
                fed.append(worker)
        return _wait_for_commits(settings, fed, timeout, progress)


def _first_feed(worker: DemoWorker, context: DemoContext) -> DemoFeed:
    return worker.hooks.feed(context)


def _follow_up(worker: DemoWorker, context: DemoContext) -> DemoFeed | None:
    return worker.hooks.follow_up(context) if worker.hooks.follow_up else None


def run_demo(registry_loader: str, messages: int, timeout: float) -> int:
    settings = Settings.from_env()
    configure_logging("WARNING", "console")
    console = Console()
    try:
        stack_up(settings, console.print)
    except StackError as error:
        console.print(f"[red]stack: {error}[/red]")
        return 1
    for migration in apply_migrations(settings.database_url):
        console.print(f"migration applied: {migration.version:04d}_{migration.name}")
    registry = load_registry(registry_loader)
    create_topics(settings, fleet_topics(registry, settings.topic_partitions))

    hooked = [(d, hooks) for d in registry if (hooks := demo_hooks(d)) is not None]
    workers = [start_worker(d, hooks, settings, registry_loader) for d, hooks in hooked]
    producer = DemoProducer(settings)
    details: dict[str, list[str]] = {}
    try:
        finished = _feed_all(settings, workers, _first_feed, messages, timeout, console, producer)
        if finished:
            finished = _feed_all(
                settings, workers, _follow_up, messages, timeout, console, producer
            )
        if not finished:
            console.print(f"[red]workers did not finish within {timeout:.0f} s[/red]")
        for worker in workers:
            context = _context(settings, worker, messages, console, _not_producing)
            text = _settled_scrape(settings, worker, context)
            details[worker.name] = list(worker.hooks.summarise(context, text))
    finally:
        stop(workers)
    print_summary(console, settings, workers, details)
    failed = [w.name for w in workers if w.process.returncode != 0]
    if failed:
        console.print(f"[red]workers exited uncleanly: {', '.join(failed)}[/red]")
        return 1
    failures = [failure for worker in workers for failure in worker.failures]
    for failure in failures:
        console.print(f"[red]{failure}[/red]")
    return 0 if finished and not failures else 1
