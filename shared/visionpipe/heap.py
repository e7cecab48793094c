"""Giving memory back to the operating system after large buffers (glibc only; a no-op elsewhere).

A decoded 50-megapixel image or a 25 MB upload is freed as soon as it is done with, but glibc's malloc may keep
the pages: after the first large block is freed it raises its mmap threshold to that block's size, so later blocks
of that size come from the heap (per-thread arenas in a thread pool), whose free pages stay in the process. A
process that handled a few large inputs then keeps hundreds of MB it no longer uses, and a burst of hostile
inputs can leave it near its memory limit for good. Two remedies, both cheap:

* :func:`keep_large_blocks_mapped` fixes the mmap threshold (which also stops its dynamic growth), so every block
  from that size up is its own mapping and goes back to the OS the moment it is freed;
* :func:`trim` asks malloc to release the free pages it holds (``malloc_trim(0)``), after a large input.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from functools import cache

log = logging.getLogger(__name__)

# mallopt's parameter numbers (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks from this size up are mmapped: a decoded image row block or an upload, never the many small objects.
LARGE_BLOCK_BYTES = 1024 * 1024


@cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.malloc_trim  # noqa: B018  # glibc's, not musl's: absent there
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def keep_large_blocks_mapped(threshold: int = LARGE_BLOCK_BYTES) -> bool:
    """Serve blocks of ``threshold`` bytes and more from mmap, for the whole process; False where not glibc."""
    libc = _libc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(M_MMAP_THRESHOLD, threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 4 * threshold))
    if not ok:
        log.warning("mallopt refused an mmap threshold of %d bytes; large buffers may stay in the heap", threshold)
    return ok


def trim() -> bool:
    """Release the free memory malloc holds back to the OS; True when some was released."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
