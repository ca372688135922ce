"""How this process's C heap keeps freed memory: for the next photo, not for the operating system.

glibc gives large freed blocks back to the kernel at once (blocks above its mmap
threshold, and the top of the heap above its trim threshold); the next photo's
buffers of the same sizes then fault in page by page again. SIFT's scale space
is such a set of buffers: 7,000 page faults and ~18 ms of system time per photo,
a third of SIFT's cost (bench/RESULTS.md, "Session 20"). Keeping up to
`KEEP_FREED_BYTES` of freed heap makes them reused instead. Only oesir's own
processes (the CLI, its workers and Ray actors) ask for this; importing oesir as
a library leaves the host process's allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
KEEP_FREED_BYTES = 256 << 20  # freed heap kept at the top of the heap for reuse
HEAP_BLOCK_BYTES = 32 << 20  # blocks up to this size come from the heap (glibc's largest mmap threshold), larger ones mmap


def keep_freed_memory(keep: int = KEEP_FREED_BYTES, block: int = HEAP_BLOCK_BYTES) -> bool:
    """Ask glibc to keep up to `keep` bytes of freed heap and to serve blocks up to `block` bytes from the heap;
    False where the C library is not glibc or refuses (the allocator then behaves as before)."""
    if keep < 0 or block < 0:
        raise ValueError(f"keep and block must be >= 0, not {keep} and {block}")
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_TRIM_THRESHOLD, keep)) and bool(mallopt(M_MMAP_THRESHOLD, block))
