"""The billing job as a Quix Streams app: the `quix_streams` peer of `bench.billing` (`quix.py`).

Runs ONLY in the Quix virtualenv (`bench/quix_env.py` makes it; Quix pins confluent-kafka
< 2.13, the fleet needs 2.16), from the repository root:

    bench/.venv-quix/bin/python -m bench.quix_billing_app --broker 127.0.0.1:19092 \
        --input-topic IN --output-topic OUT --group G --messages 200000 \
        [--processing-guarantee at-least-once|exactly-once]

The per-message work is `bench.quix_billing.BillingJob`: the fleet's own decode, validation,
counting and outcome bytes (docs/reference.md, Billing outcomes), from the pure-Python
modules of `workers.billing`.

The app, written the way Quix's documentation writes one:

    app = Application(broker_address=..., consumer_group=..., auto_offset_reset="earliest",
                      commit_interval=..., processing_guarantee=...)
    sdf = app.dataframe(input_topic)          # raw bytes in (value_deserializer="bytes")
    sdf = sdf.apply(bill).filter(is_outcome)  # outcome bytes, or dropped
    sdf.to_topic(output_topic)                # bytes out, the input key (none)

Invalid messages are dropped and counted (the benchmark's Arroyo chains have no DLQ policy:
Arroyo drops an `InvalidMessage` then too). Quix's at-least-once checkpoint: every
`commit_interval` seconds (default here: the fleet's 1 s; Quix's own default is 5 s) it
flushes the producer, i.e. waits for every outcome to be acknowledged, then commits the
consumed offsets synchronously. With `--processing-guarantee exactly-once` (Quix's
`processing_guarantee="exactly-once"`) each checkpoint is one Kafka transaction: the
outcomes produced since the last one and the consumed offsets are committed together.

The clock runs from the first message the dataframe sees to the end of the final checkpoint
after the N-th message (every outcome acknowledged, offsets committed): `on_message_processed`
counts the messages and calls `app.stop()` at N; `app.run()` then commits the checkpoint
(forced) and closes. Prints one JSON line on stdout: messages, outcomes, invalid, custom
projects seen, elapsed seconds (to the final checkpoint and to the return of `app.run()`)
and msg/s.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

# Importing quixstreams 3.28 prints one AuthlibDeprecationWarning on stderr (authlib forces
# "always" for its warnings on import, so no filter set here can hide it): harmless.
from quixstreams import Application

from bench.quix_billing import BillingJob, InvalidBucket


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The billing job as a Quix Streams app.")
    parser.add_argument("--broker", required=True)
    parser.add_argument("--input-topic", required=True)
    parser.add_argument("--output-topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--messages", type=int, required=True, help="stop after N messages")
    parser.add_argument(
        "--commit-interval", type=float, default=1.0, help="seconds (Quix default: 5.0)"
    )
    parser.add_argument("--consumer-config", default="{}", help="JSON: extra librdkafka keys")
    parser.add_argument("--producer-config", default="{}", help="JSON: extra librdkafka keys")
    parser.add_argument(
        "--processing-guarantee",
        choices=("at-least-once", "exactly-once"),
        default="at-least-once",
        help="Quix's processing_guarantee (exactly-once: one transaction per checkpoint)",
    )
    return parser.parse_args(argv)


class Run:
    """What the app saw, and when."""

    def __init__(self, messages: int) -> None:
        self.messages = messages
        self.consumed = 0
        self.outcomes = 0
        self.invalid = 0
        self.started: float | None = None
        self.stopping: float | None = None
        self.checkpointed: float | None = None


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    run = Run(args.messages)
    job = BillingJob()
    bill_bucket = job.bill

    def bill(raw: bytes) -> bytes | None:
        if run.started is None:
            run.started = time.perf_counter()
        try:
            outcome = bill_bucket(raw)
        except InvalidBucket:
            run.invalid += 1
            return None
        if outcome is not None:
            run.outcomes += 1
        return outcome

    with tempfile.TemporaryDirectory(prefix="quix-billing-state-") as state_dir:
        app: Any = None

        def processed(_topic: str, _partition: int, _offset: int) -> None:
            run.consumed += 1
            if run.consumed == run.messages:
                run.stopping = time.perf_counter()
                app.stop()

        app = Application(
            broker_address=args.broker,
            consumer_group=args.group,
            auto_offset_reset="earliest",
            commit_interval=args.commit_interval,
            consumer_extra_config=json.loads(args.consumer_config),
            producer_extra_config=json.loads(args.producer_config),
            on_message_processed=processed,
            processing_guarantee=args.processing_guarantee,
            state_dir=state_dir,
            loglevel="WARNING",
        )
        _time_final_checkpoint(app, run)
        input_topic = app.topic(args.input_topic, value_deserializer="bytes")
        output_topic = app.topic(args.output_topic, value_serializer="bytes")
        sdf = app.dataframe(input_topic)
        sdf = sdf.apply(bill).filter(lambda outcome: outcome is not None)
        sdf.to_topic(output_topic)
        app.run()
        returned = time.perf_counter()

    if run.started is None or run.consumed < run.messages:
        raise SystemExit(f"stopped after {run.consumed} of {run.messages} messages")
    finished = run.checkpointed if run.checkpointed is not None else returned
    elapsed = finished - run.started
    print(
        json.dumps(
            {
                "processing_guarantee": args.processing_guarantee,
                "messages": run.consumed,
                "outcomes": run.outcomes,
                "invalid": run.invalid,
                "custom_projects": len(job.custom_projects),
                "elapsed_s": round(elapsed, 6),
                "elapsed_to_run_return_s": round(returned - run.started, 6),
                "msg_per_s": round(run.consumed / elapsed, 1),
            }
        )
    )


def _time_final_checkpoint(app: Any, run: Run) -> None:
    """Note when the forced checkpoint after `app.stop()` has committed.

    Quix has no public hook for it: this wraps the processing context's
    `commit_checkpoint` (quixstreams 3.28) and falls back to the return of `app.run()`.
    """
    context = getattr(app, "_processing_context", None)
    commit = getattr(context, "commit_checkpoint", None)
    if context is None or commit is None:
        logging.getLogger(__name__).warning("no commit_checkpoint: timing to app.run() return")
        return

    def timed_commit(force: bool = False, revoking: bool = False) -> None:
        commit(force=force, revoking=revoking)
        if force and run.stopping is not None and run.checkpointed is None:
            run.checkpointed = time.perf_counter()

    context.commit_checkpoint = timed_commit


if __name__ == "__main__":
    main(sys.argv[1:])
