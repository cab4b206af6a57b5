"""glibc malloc settings for a long-running server, so that memory freed after a request goes back to the system.

By default glibc raises its mmap threshold each time a large block is freed (up to 32 MB) and keeps one arena per
thread that ever allocated: the activation buffers of each forward pass then stay in the heap of whichever worker
thread ran it, and a server's RSS climbs with its concurrency. A fixed threshold sends every large buffer to mmap,
returned on free; a few arenas bound what concurrent workers strand. The smaller blocks freed inside the heaps stay
resident until `malloc_trim` hands their pages back, which `IdleTrim` does each time the last running request ends.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

M_MMAP_THRESHOLD = -3  # mallopt parameters, from glibc's malloc.h
M_ARENA_MAX = -8
MMAP_THRESHOLD = 1 << 20
ARENAS = 2


def _glibc(function: str):
    """A function of glibc, or None where the C library is another one."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), function)
    except (OSError, AttributeError):
        return None


def return_freed_memory(mmap_threshold: int = MMAP_THRESHOLD, arenas: int = ARENAS) -> bool:
    """Apply the settings above to this process; False where the C library is not glibc (nothing changes)."""
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1 and mallopt(M_ARENA_MAX, arenas) == 1


class IdleTrim:
    """Counts the requests running; when the last one ends, the heaps' free pages go back to the system, so the RSS
    after a burst falls back to what the caches and models hold (a no-op where the C library is not glibc)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self.trims = 0
        self._malloc_trim = _glibc("malloc_trim")
        if self._malloc_trim is not None:
            self._malloc_trim.argtypes, self._malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int

    @contextmanager
    def request(self) -> Iterator[None]:
        """Run one request inside this block."""
        with self._lock:
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                idle = self._running == 0 and self._malloc_trim is not None
                self.trims += idle
            if idle:
                self._malloc_trim(0)

    def collect(self) -> None:
        """A full garbage collection, then the heaps' free pages back to the system: for memory that only a
        reference cycle kept."""
        gc.collect()
        if self._malloc_trim is not None:
            self._malloc_trim(0)


IDLE_TRIM = IdleTrim()  # the one the app's request handlers share
