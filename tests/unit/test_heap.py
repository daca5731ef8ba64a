from __future__ import annotations

import gc
import weakref

from workers.common.heap import freeze_startup_heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_startup_objects_are_frozen_and_startup_garbage_is_collected_first() -> None:
    gc.disable()  # no automatic collection may free the garbage before the call under test
    try:
        alive = [Node() for _ in range(100)]
        garbage = weakref.ref(Node())
        assert garbage() is not None
        freeze_startup_heap()
        assert garbage() is None
        assert gc.get_freeze_count() >= len(alive)
    finally:
        gc.unfreeze()
        gc.enable()
    assert gc.get_freeze_count() == 0
