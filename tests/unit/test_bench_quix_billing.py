"""The Quix Streams peer's billing work (bench/quix_billing.py) is the fleet's, byte for byte.

It is built from the fleet's own modules; these tests pin down that the composition (what
bills, what is custom, which bytes) matches the fleet's chain and that it imports nothing
the Quix virtualenv lacks.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.quix_billing import BillingJob, InvalidBucket
from tests.support.billing_fakes import Translator
from workers.billing.outcome import OutcomeEncoder
from workers.billing.traffic import DEMO_MIX, PRODUCTION_MIX, sample_message

REPO_ROOT = Path(__file__).resolve().parents[2]
REFERENCE_LINE = (
    b'{"timestamp":"2024-01-07T08:09:00.000000Z","org_id":1,"project_id":3,"key_id":null,'
    b'"outcome":0,"reason":null,"event_id":null,"category":2,"quantity":7}'
)
REFERENCE_SECOND_NS = 1_704_614_940 * 10**9
TRANSACTIONS = 9223372036854775945
SPANS = 9223372036854776226


_fleet_clock: list[Callable[[], int]] = [lambda: REFERENCE_SECOND_NS]
_FLEET = Translator(clock_ns=lambda: _fleet_clock[0]())


def _fleet(raw: bytes, clock: Callable[[], int]) -> tuple[str, Any]:
    """('invalid', (code, detail)) or ('ok', (outcome bytes or None, is custom)).

    What the fleet's own chain step (`TranslateOutcomes`) makes of `raw`.
    """
    _fleet_clock[0] = clock
    batch = _FLEET.batch([raw])
    if batch.dead_letters:
        [letter] = batch.dead_letters
        code, _, detail = letter.reason.partition(": ")
        return "invalid", (code, detail)
    data = batch.payloads[0]["value"] if batch.payloads else None
    return "ok", (data, bool(batch.candidates))


def _peer(raw: bytes, clock: Callable[[], int]) -> tuple[str, Any]:
    job = BillingJob(clock)
    try:
        data = job.bill(raw)
    except InvalidBucket as error:
        return "invalid", (error.code, error.detail)
    return "ok", (data, bool(job.custom_projects))


def _counter(metric_id: int, value: object, **extra: object) -> bytes:
    bucket = {
        "org_id": 1,
        "project_id": 3,
        "metric_id": metric_id,
        "type": "c",
        "value": value,
        "timestamp": 1_704_614_940,
        "use_case_id": "transactions",
        **extra,
    }
    # stdlib json: orjson refuses integers outside 64 bits, the edge cases need some.
    return json.dumps(bucket).encode()


EDGE_CASES = [
    _counter(TRANSACTIONS, 7),
    _counter(SPANS, 2.9),
    _counter(TRANSACTIONS, 0.5),
    _counter(TRANSACTIONS, -3),
    _counter(TRANSACTIONS, 1e30),
    _counter(TRANSACTIONS, True),
    _counter(TRANSACTIONS, [1, 2]),
    _counter(TRANSACTIONS, {"format": "array", "data": [1.0]}),
    _counter(TRANSACTIONS, "seven"),
    _counter(TRANSACTIONS, 7, mapping_meta=[]),
    _counter(TRANSACTIONS, 7, type="d"),
    _counter(TRANSACTIONS, 7, type="x"),
    _counter(2**64, 7),
    _counter(TRANSACTIONS, 7, org_id=2**64),
    _counter(TRANSACTIONS, 7, project_id=-1),
    _counter(TRANSACTIONS, 7, timestamp=-1.5),
    _counter(TRANSACTIONS, 7, timestamp=1e20),
    _counter(TRANSACTIONS, 7, use_case_id=5),
    _counter(TRANSACTIONS, {"format": "base64", "data": "AAAA="}),
    _counter(TRANSACTIONS, {"format": "zstd", "data": "AAAA"}),
    _counter(TRANSACTIONS, {"min": 1, "max": 2, "sum": 3, "count": 2.0, "last": 1}),
    _counter(
        9223372036854776500,
        4.0,
        mapping_meta={"c": {"9223372036854776500": "c:custom/checkout.clicks@none"}},
    ),
    b"",
    b"null",
    b"{not json",
]


def _fixed_clock(now: int) -> Callable[[], int]:
    return lambda: now


def _traffic(mix_name: str, count: int) -> list[bytes]:
    rng = random.Random(7)
    mix = PRODUCTION_MIX if mix_name == "production" else DEMO_MIX
    return [sample_message(rng, index, mix=mix) for index in range(count)]


def test_spec_example_bytes_exactly() -> None:
    assert BillingJob(lambda: REFERENCE_SECOND_NS).encode(1, 3, 2, 7) == REFERENCE_LINE
    assert BillingJob(lambda: REFERENCE_SECOND_NS).bill(_counter(TRANSACTIONS, 7)) == REFERENCE_LINE


@pytest.mark.parametrize("mix_name", ["production", "demo"])
def test_same_verdict_and_bytes_as_the_fleet_on_the_benchmark_mix(mix_name: str) -> None:
    clock = iter(range(REFERENCE_SECOND_NS, REFERENCE_SECOND_NS + 10**15, 123_456_789)).__next__
    kinds: set[str] = set()
    for raw in _traffic(mix_name, 3000):
        fixed = _fixed_clock(clock())
        fleet = _fleet(raw, fixed)
        assert _peer(raw, fixed) == fleet, raw
        verdict, detail = fleet
        if verdict == "invalid":
            kinds.add("invalid")
        else:
            data, custom = detail
            kinds.add("billable" if data is not None else "custom" if custom else "other")
    # The sample covers every kind of message the benchmark sends.
    assert kinds == {"invalid", "billable", "custom", "other"}


@pytest.mark.parametrize("raw", EDGE_CASES)
def test_same_verdict_and_bytes_as_the_fleet_on_edge_cases(raw: bytes) -> None:
    assert _peer(raw, lambda: REFERENCE_SECOND_NS) == _fleet(raw, lambda: REFERENCE_SECOND_NS)


@settings(max_examples=300, deadline=None)
@given(
    epoch_ns=st.integers(min_value=0, max_value=4_102_444_800 * 10**9),
    org_id=st.integers(min_value=0, max_value=2**64 - 1),
    project_id=st.integers(min_value=0, max_value=2**64 - 1),
    category=st.sampled_from([2, 12]),
    quantity=st.integers(min_value=1, max_value=10**31),
)
def test_encoding_is_byte_identical(
    epoch_ns: int, org_id: int, project_id: int, category: int, quantity: int
) -> None:
    fleet = OutcomeEncoder(lambda: epoch_ns).encode(org_id, project_id, category, quantity)
    peer = BillingJob(lambda: epoch_ns).encode(org_id, project_id, category, quantity)
    assert peer == fleet


def test_the_peer_module_imports_nothing_the_quix_virtualenv_lacks() -> None:
    code = (
        "import sys, bench.quix_billing\n"
        "bad = {'quixstreams', 'confluent_kafka', 'arroyo', 'psycopg', 'redis',\n"
        "       'prometheus_client'}\n"
        "loaded = sorted(bad & {name.split('.')[0] for name in sys.modules})\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)
