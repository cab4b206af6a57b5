"""glibc malloc settings for a long-running server, so that memory freed after a request goes back to the system.

By default glibc raises its mmap threshold each time a large block is freed (up to 32 MB) and keeps one arena per
thread that ever allocated: the activation buffers of each forward pass then stay in the heap of whichever worker
thread ran it, and a server's RSS climbs with its concurrency. A fixed threshold sends every large buffer to mmap,
returned on free; a few arenas bound what concurrent workers strand.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # mallopt parameters, from glibc's malloc.h
M_ARENA_MAX = -8
MMAP_THRESHOLD = 1 << 20
ARENAS = 2


def return_freed_memory(mmap_threshold: int = MMAP_THRESHOLD, arenas: int = ARENAS) -> bool:
    """Apply the settings above to this process; False where the C library is not glibc (nothing changes)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1 and mallopt(M_ARENA_MAX, arenas) == 1
