"""What popd asks of the memory allocators: return freed heap to the
kernel, and keep a forked slot's allocations off the pages it shares.

Runs in: a session's child once its client is idle after a large reply,
and a TLS front once its pipe is idle (trim); the spawner, once, before
it forks slots (fill_free_blocks).

trim(): glibc's mmap threshold is dynamic.  A block of more than 128 KiB
is first mmap()ed, and when it is freed the threshold rises to its size
(up to 32 MiB), so later blocks that size come from the heap, and the
freed heap stays with the process (the trim threshold rises to twice as
much).  A session streams RETR in 256 KiB reads: after one large RETR, a
session that then sits idle for minutes would keep that heap as private
memory.  Fixing the threshold instead (mallopt) would mmap and fault in
every 256 KiB read: measured, RETR fell from ~580 to ~340 MB/s.  Trimming
once the large reply is sent keeps the fast path and returns the memory.
Elsewhere than glibc (no malloc_trim): nothing.

fill_free_blocks(): CPython's small-object allocator (pymalloc) serves a
new object from the free blocks of its pools in use first: blocks freed
all over the image while popd imported and configured itself.  In a
forked slot each such block taken is a write to a page it shares with
every other slot, so the whole page is copied for one object.  Taking
them all in the spawner, once, before it forks, leaves a slot nothing but
pools of its own to allocate from (measured with bench/session_memory.py:
about 150 kB less per session).  The blocks are counted from
sys._debugmallocstats(), CPython's allocator report, whose format is
CPython's own: where it says nothing (another allocator,
PYTHONMALLOC=malloc), nothing is done, and rows that do not read as a
size class, or more than MAX_FILL bytes in all, are never taken.
"""
import ctypes
import os
import re
import sys

# glibc's first mmap threshold: a reply at least this large went through
# blocks that big, which may stay in the heap once freed.
LARGE_BLOCK = 128 * 1024

try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim
    _malloc_trim.argtypes = [ctypes.c_size_t]
except (OSError, AttributeError):
    _malloc_trim = None

# One row of the report's table: class, block size, pools, blocks in use,
# blocks free.
_SIZE_CLASS_ROW = re.compile(rb"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$", re.M)
# An int above the small-int cache, below 2**30: one digit, 28 bytes.
_ONE_DIGIT_INT = 1 << 20
# What fill_free_blocks() takes at most (a report read wrong must not make
# the spawner allocate without bound); measured: 0.3 to 0.4 MB.
MAX_FILL = 8 * 1024 * 1024


def trim():
    """Return the free heap pages to the kernel (the top of the heap, and
    whole free pages inside it, glibc >= 2.8)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def free_blocks():
    """{block size: free blocks in the pools in use} from pymalloc's report
    (which CPython writes to fd 2, so fd 2 is pointed at a memfd meanwhile);
    {} when the report has no such table or cannot be read (out of fds)."""
    try:
        report = os.memfd_create("popd-mallocstats")
    except OSError:
        return {}
    try:
        saved = os.dup(2)
    except OSError:
        os.close(report)
        return {}
    try:
        os.dup2(report, 2)
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    try:
        text = os.pread(report, 1 << 20, 0)
    finally:
        os.close(report)
    table = text.split(b"# arenas", 1)[0]
    rows = {int(m[2]): int(m[5]) for m in _SIZE_CLASS_ROW.finditer(table)}
    return {size: free for size, free in rows.items()
            if size % 16 == 0 and 16 <= size <= 512}


def object_of_size(size):
    """A new object that pymalloc serves from blocks of `size` bytes (a
    multiple of 16, up to 512), and that the collector does not track."""
    if size <= 16:
        return object()
    if size <= 32:
        return _ONE_DIGIT_INT + 1                     # computed: a new int each call
    return bytes(size - sys.getsizeof(b""))           # b"" is 33 bytes: this is `size`


# What fill_free_blocks() took: kept for the process's life, never read.
_taken = []


def fill_free_blocks():
    """Take every free block of pymalloc's pools in use; the number taken."""
    blocks = free_blocks()
    if sum(size * free for size, free in blocks.items()) > MAX_FILL:
        return 0
    before = len(_taken)
    for size, free in blocks.items():
        _taken.extend(object_of_size(size) for _ in range(free))
    return len(_taken) - before
