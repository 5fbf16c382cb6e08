"""Giving freed heap memory back to the kernel (glibc's malloc_trim).

Runs in: a session's child, after it sent a large message.

Why: glibc's mmap threshold is dynamic.  A block of more than 128 KiB is
first mmap()ed, and when it is freed the threshold rises to its size (up
to 32 MiB), so later blocks that size come from the heap, and the freed
heap stays with the process (the trim threshold rises to twice as much).
A session streams RETR in 256 KiB reads: after one large RETR, a session
that then sits idle for minutes would keep that heap as private memory.
Fixing the threshold instead (mallopt) would mmap and fault in every
256 KiB read: measured, RETR fell from ~580 to ~340 MB/s.  Trimming once
the large reply is sent keeps the fast path and returns the memory.
Elsewhere than glibc (no malloc_trim): nothing.
"""
import ctypes

# glibc's first mmap threshold: a reply at least this large went through
# blocks that big, which may stay in the heap once freed.
LARGE_BLOCK = 128 * 1024

try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim
    _malloc_trim.argtypes = [ctypes.c_size_t]
except (OSError, AttributeError):
    _malloc_trim = None


def trim():
    """Return the free heap pages to the kernel (the top of the heap, and
    whole free pages inside it, glibc >= 2.8)."""
    if _malloc_trim is not None:
        _malloc_trim(0)
