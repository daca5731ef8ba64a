"""Verifying the files of one assemble request: their chunks read back from storage and
hashed, within a budget (docs/gateway.md, Bounded assemble).

A file is verified by the sha1 of its chunks' bytes in order. Within one request:

- files with the same chunk list are hashed once (`VerifyPlan`): one sha1, compared with
  each file's claimed checksum;
- the chunk lists to hash cost at most `max_bytes` (`VerifyPlan.admit`), each chunk counted
  as at least `MIN_CHUNK_COST` bytes so that a request of many tiny chunks is bounded in
  reads as well as in bytes. A file that does not fit is not read at all;
- every chunk is read through one `ChunkReader`, which knows the whole order of reads in
  advance and keeps up to `cache_bytes` of chunk bytes between their uses, dropping first
  the chunk needed again furthest in the future (Belady's rule, the fewest reads a cache of
  that size allows). A chunk listed many times, by one file or by several, is read from
  storage once unless more than `cache_bytes` of other chunks still needed later stand
  between two of its uses.

What one request costs is therefore at most `max_bytes` hashed and at most
`max_bytes / MIN_CHUNK_COST` storage reads of at most `max_bytes` bytes in all, with at most
`cache_bytes` plus one chunk held in memory.
"""

from __future__ import annotations

import hashlib
import heapq
import sys
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from workers.common.storage import BlobStorage
from workers.gateway.options import CHUNK_SIZE

GIB: Final = 1024**3
#: Bytes of chunks one request may have hashed (a maximal 4 GiB file fits twice).
DEFAULT_MAX_VERIFY_BYTES: Final = 8 * GIB
#: Chunk bytes one request keeps between two uses of a chunk.
DEFAULT_CACHE_BYTES: Final = 2 * CHUNK_SIZE
#: What a chunk counts for at least: 8 GiB of budget are at most 8,192 storage reads.
MIN_CHUNK_COST: Final = 1024 * 1024

_NEVER: Final = sys.maxsize

# ELF e_machine → the cpu names sentry-cli prints.
_ELF_MACHINES: Final = {3: "x86", 40: "arm", 62: "x86_64", 183: "arm64", 243: "riscv64"}


def cpu_name(head: bytes) -> str | None:
    """The cpu of an ELF file from its first 20 bytes; None for anything else."""
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    order: Literal["little", "big"] = "little" if head[5] == 1 else "big"
    machine = int.from_bytes(head[18:20], order)
    return _ELF_MACHINES.get(machine, "unknown")


@dataclass(frozen=True)
class Verified:
    """What a chunk list makes: the sha1 and size of the whole file, and its cpu."""

    checksum: str
    size: int
    cpu_name: str | None


def chunk_list_cost(chunks: Sequence[str], sizes: Mapping[str, int]) -> int:
    """What hashing `chunks` (of the sizes of their blobs) counts against the budget."""
    return sum(max(sizes[checksum], MIN_CHUNK_COST) for checksum in chunks)


class VerifyPlan:
    """The distinct chunk lists one request hashes, admitted in order within `max_bytes`."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_VERIFY_BYTES) -> None:
        self.max_bytes = max_bytes
        self.__left = max_bytes
        self.__lists: dict[tuple[str, ...], None] = {}

    @property
    def lists(self) -> list[tuple[str, ...]]:
        return list(self.__lists)

    def chunks(self) -> list[str]:
        """The distinct chunks of the admitted lists (at most `max_bytes / MIN_CHUNK_COST`)."""
        return list(dict.fromkeys(checksum for chunks in self.__lists for checksum in chunks))

    @property
    def spent(self) -> int:
        return self.max_bytes - self.__left

    def admit(self, chunks: tuple[str, ...], cost: int) -> bool:
        """Whether `chunks` get hashed: free when the same list already is, else when `cost`
        still fits the budget (which it then takes)."""
        if chunks in self.__lists:
            return True
        if cost > self.__left:
            return False
        self.__left -= cost
        self.__lists[chunks] = None
        return True


def _next_uses(order: Sequence[str]) -> array[int]:
    """For each position, the next position reading the same chunk (`_NEVER` if none)."""
    following = array("q", bytes(8 * len(order)))
    last: dict[str, int] = {}
    for position in range(len(order) - 1, -1, -1):
        checksum = order[position]
        following[position] = last.get(checksum, _NEVER)
        last[checksum] = position
    return following


class ChunkReader:
    """The chunks of `order` read from `storage` (at `paths`) one after the other, keeping
    at most `cache_bytes` of them between uses (see the module's docstring)."""

    def __init__(
        self,
        storage: BlobStorage,
        paths: Mapping[str, str],
        order: Sequence[str],
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.__storage = storage
        self.__paths = paths
        self.__order = order
        self.__capacity = cache_bytes
        self.__next_use = _next_uses(order)
        self.__kept: dict[str, tuple[bytes, int]] = {}
        # (-next use, checksum) of kept chunks; entries for chunks since taken are skipped.
        self.__furthest: list[tuple[int, str]] = []
        self.__held = 0
        #: Storage reads and the bytes they returned.
        self.reads = 0
        self.read_bytes = 0

    @property
    def held_bytes(self) -> int:
        """Bytes of chunks kept for later uses right now (at most `cache_bytes`)."""
        return self.__held

    def __iter__(self) -> Iterator[bytes]:
        for position, checksum in enumerate(self.__order):
            kept = self.__kept.pop(checksum, None)
            if kept is None:
                data = self.__storage.get(self.__paths[checksum])
                self.reads += 1
                self.read_bytes += len(data)
            else:
                data = kept[0]
                self.__held -= len(data)
            self.__keep(checksum, data, self.__next_use[position])
            yield data

    def __keep(self, checksum: str, data: bytes, next_use: int) -> None:
        if next_use == _NEVER or len(data) > self.__capacity:
            return
        while self.__held + len(data) > self.__capacity:
            furthest = self.__furthest_kept()
            if furthest is None or furthest[0] < next_use:
                return  # every kept chunk is needed sooner than this one
            dropped, _ = self.__kept.pop(furthest[1])
            self.__held -= len(dropped)
        self.__kept[checksum] = (data, next_use)
        self.__held += len(data)
        heapq.heappush(self.__furthest, (-next_use, checksum))

    def __furthest_kept(self) -> tuple[int, str] | None:
        """(next use, checksum) of the kept chunk needed furthest in the future."""
        while self.__furthest:
            negative_use, checksum = self.__furthest[0]
            kept = self.__kept.get(checksum)
            if kept is not None and kept[1] == -negative_use:
                return -negative_use, checksum
            heapq.heappop(self.__furthest)
        return None


@dataclass(frozen=True)
class Verification:
    results: dict[tuple[str, ...], Verified]
    reads: int
    read_bytes: int
    hashed_bytes: int


def verify_chunk_lists(
    storage: BlobStorage,
    paths: Mapping[str, str],
    lists: Sequence[tuple[str, ...]],
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> Verification:
    """The file each chunk list makes (blocking: storage reads and hashing)."""
    order = [checksum for chunks in lists for checksum in chunks]
    reader = ChunkReader(storage, paths, order, cache_bytes)
    pieces = iter(reader)
    results: dict[tuple[str, ...], Verified] = {}
    hashed = 0
    for chunks in lists:
        hasher = hashlib.sha1(usedforsecurity=False)
        size = 0
        head = b""
        for _ in chunks:
            data = next(pieces)
            if not head:
                head = data[:20]
            hasher.update(data)
            size += len(data)
        hashed += size
        results[chunks] = Verified(hasher.hexdigest(), size, cpu_name(head))
    return Verification(results, reader.reads, reader.read_bytes, hashed)
