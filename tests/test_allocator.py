"""The server's heap settings: the last request to end hands freed heap pages back to the system."""

from __future__ import annotations

from pathlib import Path

import pytest

from cbam_viz.app.allocator import IdleTrim


def anonymous_mb() -> float:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no Anonymous line in /proc/self/smaps_rollup")


@pytest.fixture
def trim() -> IdleTrim:
    if not Path("/proc/self/smaps_rollup").exists():
        pytest.skip("reads the process's memory from Linux's /proc")
    return IdleTrim()


def test_only_the_last_running_request_trims(trim):
    with trim.request():
        with trim.request():
            pass
        assert trim.trims == 0  # one still running
    expected = 1 if trim._malloc_trim is not None else 0
    assert trim.trims == expected
    with pytest.raises(ValueError), trim.request():
        raise ValueError("a failed request ends too")
    assert trim.trims == 2 * expected


def test_a_trim_returns_the_pages_of_freed_small_blocks(trim):
    if trim._malloc_trim is None:
        pytest.skip("the C library is not glibc")
    blocks = [bytearray(1000) for _ in range(150_000)]  # ~150 MB of heap blocks, each far below mmap's threshold
    keep = bytearray(1000)  # allocated last: the heap's top stays in use, so free() alone cannot shrink it
    before = anonymous_mb()
    del blocks
    freed = anonymous_mb()
    with trim.request():
        pass
    after = anonymous_mb()
    assert before - freed < 50 and before - after > 100, (before, freed, after)  # free() alone kept them
    assert keep is not None
