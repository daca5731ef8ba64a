"""`workers demo`: the README's first command, the fleet end to end on the local stack.

Brings the stack up, migrates, creates topics, starts every registered worker that has demo
hooks (`ConsumerDefinition.demo`, or its `sample_traffic`) as a real `workers run` process in
a consumer group of its own starting at the end of its topic, feeds each through its hooks
(a few messages malformed on purpose), waits until each committed all of it, and prints a
summary of this run's traffic only. It never looks at a worker's name: what is worker-specific
comes from the hooks (`billing.py`, `blob_ingest.py`, attached in `workers.fleet`).

- `run.py`: the steps; `processes.py`: the worker processes and where their counts start;
- `traffic.py`: producing with progress bars, hooks from `sample_traffic`;
- `summary.py`: the table and each worker's lines; `scrape.py`: reading /metrics;
- `organization.py`: the demo organization and projects; `gateway.py`: sentry-cli through a
  gateway subprocess.
"""

from __future__ import annotations

import sys

import click


def make_demo_command(registry_loader: str) -> click.Command:
    @click.command(help="The main job: stack, migrations, topics, every worker, sample traffic.")
    @click.option("--messages", type=click.IntRange(min=1), default=20_000, show_default=True)
    @click.option("--timeout", type=click.FloatRange(min=1.0), default=180.0, show_default=True)
    def demo(messages: int, timeout: float) -> None:
        from workers.demo.run import run_demo

        sys.exit(run_demo(registry_loader, messages, timeout))

    return demo
