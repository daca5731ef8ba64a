"""bench.gateway's pure parts: the ratio to the ceiling, its verdict, and the shared chunks."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from bench.gateway import ceiling
from bench.gateway.shapes import KIB, MIB, Shape, build
from bench.gateway.summary import TARGET_RATIO, median_run, target_for
from workers.gateway import services
from workers.gateway.multipart import ChunkReader, boundary_of
from workers.gateway.options import UploadLimits


def test_the_target_is_for_raw_1_mib_chunks() -> None:
    assert target_for(Shape("64 KiB", 64 * KIB, 64, 1)) is None
    assert target_for(Shape("1 MiB", MIB, 32, 1)) == TARGET_RATIO == 0.5
    assert target_for(Shape("1 MiB gz", MIB, 32, 1, gzip=True)) is None


@dataclass(frozen=True)
class Run:
    seconds: float


def test_median_run() -> None:
    assert median_run([Run(3.0), Run(1.0), Run(2.0)]) == Run(2.0)
    assert median_run([Run(4.0), Run(1.0)]) == Run(1.0)
    assert median_run([Run(5.0)]) == Run(5.0)


@pytest.mark.parametrize("gzip", [False, True])
def test_both_variants_send_the_same_chunks(gzip: bool) -> None:
    """What the gateway reads from the bodies is exactly what the ceiling produces."""
    work = build(Shape("small", 4 * KIB, 3, 2, gzip=gzip))
    assert len(work.bodies) == len(work.requests) == 2
    for (body, content_type), chunks in zip(work.bodies, work.requests, strict=True):
        reader = ChunkReader(boundary_of(content_type), UploadLimits(), None)
        reader.feed(body)
        received = reader.finish()
        assert [(c.checksum, c.value, c.encoding) for c in received] == [
            (c.checksum, c.value, c.encoding) for c in chunks
        ]
        assert all(c.size == 4 * KIB for c in received)
    assert len({c.checksum for request in work.requests for c in request}) == 6
    expected = sum(len(c.value) for request in work.requests for c in request)
    assert work.value_bytes == expected
    if not gzip:
        assert expected == 6 * 4 * KIB


def test_the_ceiling_builds_the_gateways_producer() -> None:
    assert vars(ceiling)["gateway_producer"] is services.gateway_producer
