"""Upload slots (fair share per organization, bounded wait) and the body's pace."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from workers.gateway.pacing import BODY_IDLE_TIMEOUT, BODY_TOO_SLOW, BodyPace, SlowUpload, paced
from workers.gateway.upload_slots import NoUploadSlot, UploadSlots, default_share


async def _hold(slots: UploadSlots, organization_id: int, release: asyncio.Event) -> None:
    async with slots.slot(organization_id):
        await release.wait()


async def _until(condition: object, what: str) -> None:
    """Let the other tasks run until `condition()` holds (a deadline, never a fixed sleep)."""
    async with asyncio.timeout(5):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0)


def test_default_share_is_half_the_slots_and_at_least_one() -> None:
    assert [default_share(n) for n in (1, 2, 3, 8)] == [1, 1, 2, 4]


def test_one_organization_cannot_take_every_slot() -> None:
    async def scenario() -> None:
        slots = UploadSlots(4, max_wait_seconds=5)
        release = asyncio.Event()
        greedy = [asyncio.create_task(_hold(slots, 1, release)) for _ in range(6)]
        await _until(lambda: slots.in_use == 2 and slots.waiting == 4, "greedy org capped")
        # Another organization gets a slot at once, though the greedy one is waiting.
        async with slots.slot(2):
            assert slots.held_by(2) == 1
            assert slots.held_by(1) == 2
        release.set()
        await asyncio.gather(*greedy)
        assert slots.in_use == 0

    asyncio.run(scenario())


def test_waiting_organizations_are_served_in_turn() -> None:
    async def scenario() -> None:
        slots = UploadSlots(1, max_wait_seconds=5)
        order: list[int] = []
        gate = asyncio.Event()

        async def upload(organization_id: int) -> None:
            async with slots.slot(organization_id):
                order.append(organization_id)
                await gate.wait()

        first = asyncio.create_task(upload(1))
        await _until(lambda: slots.in_use == 1, "first holds the slot")
        waiting = []
        for queued, organization_id in enumerate((1, 1, 1, 2, 3), start=1):
            waiting.append(asyncio.create_task(upload(organization_id)))
            await _until(lambda queued=queued: slots.waiting == queued, "queued")
        gate.set()
        await asyncio.gather(first, *waiting)
        # Organization 1 queued three more first, yet 2 and 3 are not served after all of them.
        assert order == [1, 1, 2, 3, 1, 1]

    asyncio.run(scenario())


def test_a_request_waits_a_bounded_time_for_a_slot() -> None:
    async def scenario() -> None:
        slots = UploadSlots(1, max_wait_seconds=0.05)
        release = asyncio.Event()
        holder = asyncio.create_task(_hold(slots, 1, release))
        await _until(lambda: slots.in_use == 1, "slot taken")
        with pytest.raises(NoUploadSlot) as refused:
            async with slots.slot(2):
                pass
        assert refused.value.retry_after_seconds >= 1
        assert slots.waiting == 0
        release.set()
        await holder
        assert slots.in_use == 0

    asyncio.run(scenario())


def test_a_cancelled_waiter_gives_its_place_up() -> None:
    async def scenario() -> None:
        slots = UploadSlots(1, max_wait_seconds=5)
        release = asyncio.Event()
        holder = asyncio.create_task(_hold(slots, 1, release))
        await _until(lambda: slots.in_use == 1, "slot taken")
        waiter = asyncio.create_task(_hold(slots, 2, release))
        await _until(lambda: slots.waiting == 1, "queued")
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert slots.waiting == 0
        release.set()
        await holder
        assert (slots.in_use, slots.held_by(1), slots.held_by(2)) == (0, 0, 0)

    asyncio.run(scenario())


async def _pieces(*pieces: bytes, then_stall: bool = False) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece
    if then_stall:
        await asyncio.Event().wait()


async def _read(body: AsyncIterator[bytes], pace: BodyPace) -> bytes:
    return b"".join([piece async for piece in paced(body, pace)])


def test_a_body_at_pace_is_read_whole() -> None:
    body = _pieces(b"a" * 10, b"b" * 10)
    assert asyncio.run(_read(body, BodyPace(idle_seconds=5))) == b"a" * 10 + b"b" * 10


def test_a_stalled_body_times_out() -> None:
    with pytest.raises(SlowUpload) as slow:
        asyncio.run(_read(_pieces(b"abc", then_stall=True), BodyPace(idle_seconds=0.05)))
    assert slow.value.reason == BODY_IDLE_TIMEOUT


def test_a_body_below_the_minimum_rate_after_the_grace_is_refused() -> None:
    # No grace and an unreachable rate: the first piece is already too slow.
    pace = BodyPace(idle_seconds=5, min_bytes_per_second=10**15, grace_seconds=-1)
    with pytest.raises(SlowUpload) as slow:
        asyncio.run(_read(_pieces(b"abc"), pace))
    assert slow.value.reason == BODY_TOO_SLOW


def test_both_kinds_of_slots_are_reported_at_every_scrape() -> None:
    from prometheus_client import CollectorRegistry

    from workers.gateway.metrics import GatewayMetrics

    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    uploads, assembles = UploadSlots(4), UploadSlots(2, max_wait_seconds=5)
    metrics.watch_slots("upload", uploads)
    metrics.watch_slots("assemble", assembles)

    async def scenario() -> None:
        release = asyncio.Event()
        holders = [asyncio.create_task(_hold(assembles, 1, release)) for _ in range(3)]
        await _until(lambda: assembles.in_use == 1 and assembles.waiting == 2, "held")

        def sample(name: str, kind: str) -> float | None:
            return registry.get_sample_value(name, {"kind": kind})

        assert sample("workers_gateway_slots_in_use", "assemble") == 1
        assert sample("workers_gateway_slots_waiting", "assemble") == 2
        assert sample("workers_gateway_slots_in_use", "upload") == 0
        release.set()
        await asyncio.gather(*holders)

    asyncio.run(scenario())
