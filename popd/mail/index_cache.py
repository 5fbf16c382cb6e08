"""The per-maildrop index kept in the state directory, so repeat opens of a
big mbox do not rescan it.

Runs in: the session child, as the mailbox owner.

The cache holds the index columns (offset, start, stop, octets) and the
UIDL base id of each message, with what they were computed from: the
mbox's inode, size and mtime (its device is recorded but not compared:
NFS clients number a shared mount each their own way), and a digest of
samples of the indexed bytes (the first and last 64 KiB and the head of
up to 256 evenly spaced messages, each of which must still start with
`From `).  It is
used only when all of these agree; when the file has grown and the new
bytes start with `From `, only the new part is scanned (mail delivered
since).  Anything else, and any oddity in the file itself, means a full
rescan: the cache is owned by the user, so it is hostile input, bounded
and checked field by field, and it is never trusted for content (RETR
always reads the mbox).  It only spares the scan.

Loading costs a few milliseconds for 100,000 messages: the columns go
straight from the file's bytes into arrays, and every check runs in C
(one ordering test over all positions, min/max of the octet counts, one
translate() for the ids), never a Python loop per message.
"""
import hashlib
import operator
import os
import struct
import zlib
from array import array

from popd.mail import mbox, state_files, uidl

MAGIC = b"popdidx2"
_HEADER = struct.Struct("<8sQQQQQ32s")    # magic dev ino size mtime_ns count digest
_CHECK = struct.Struct("<I")              # crc32 of everything before it
SAMPLE_EDGE = 64 * 1024
SAMPLE_MESSAGES = 256
SAMPLE_HEAD = 64
BASE32 = b"abcdefghijklmnopqrstuvwxyz234567"
# A message takes at least 6 bytes ("From \n"): bounds the count a cache
# may claim for a given file size.
MIN_MESSAGE = 6
# Bytes per message in the file: four int64 columns and the base id.
_PER_MESSAGE = 4 * 8 + uidl.BASE_LEN


def sample_digest(fd, index):
    """Digest of samples of the indexed bytes [0, index.size)."""
    h = hashlib.blake2b(digest_size=32)
    size = index.size
    h.update(size.to_bytes(8, "little"))
    h.update(os.pread(fd, min(SAMPLE_EDGE, size), 0))
    h.update(os.pread(fd, min(SAMPLE_EDGE, size), max(0, size - SAMPLE_EDGE)))
    n = len(index)
    step = max(1, n // SAMPLE_MESSAGES)
    for i in range(0, n, step):
        head = os.pread(fd, SAMPLE_HEAD, index.offset(i))
        if not head.startswith(b"From "):
            return None                   # the file does not match the index
        h.update(head)
    return h.digest()


def save(path, fd, index, base_text):
    """Write the cache atomically (temporary file and rename); a failure
    only costs the next open a scan.  `base_text` is the base ids of all
    the messages, concatenated."""
    st = os.fstat(fd)
    digest = sample_digest(fd, index)
    if digest is None or len(base_text) != len(index) * uidl.BASE_LEN:
        return
    header = _HEADER.pack(MAGIC, st.st_dev, st.st_ino, index.size, st.st_mtime_ns,
                          len(index), digest)
    # Native byte order: nodes sharing a state directory share an
    # architecture (popd(8), "Several nodes, one spool").
    body = b"".join([header, *(c.tobytes() for c in index.columns()),
                     base_text.encode("ascii")])
    # Against torn or damaged files, not against the user (who owns this
    # file and could forge anything: a forged index only misleads their own
    # session, and deletion rescans anyway).  A CRC is enough for that and
    # costs a fifth of a hash; and it makes an fsync unnecessary.
    state_files.write(path, body + _CHECK.pack(zlib.crc32(body)), durable=False)


def load(path, fd):
    """(index, base_text) if the cache fits this mbox, else None.  A grown
    file is extended by scanning only its new bytes; base_text then holds
    the ids of the messages the cache knew (24 characters each)."""
    st = os.fstat(fd)
    try:
        cfd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        # Never more than a cache for this mbox can hold.
        limit = (_HEADER.size + _CHECK.size
                 + (st.st_size // MIN_MESSAGE + 1) * _PER_MESSAGE)
        length = os.fstat(cfd).st_size
        data = os.pread(cfd, length, 0) if length <= limit else b""
    finally:
        os.close(cfd)
    parsed = _parse(data, st)
    if parsed is None:
        return None
    index, base_text, digest, mtime_ns = parsed
    if index.size == st.st_size and mtime_ns != st.st_mtime_ns:
        return None                       # same size, rewritten: rescan
    if sample_digest(fd, index) != digest:
        return None
    if st.st_size > index.size:
        try:
            mbox.scan(fd, st.st_size, extend=index)
        except mbox.MboxFormatError:
            return None
    return index, base_text


def _parse(data, st):
    """Strict decoding of a cache file; None for anything off."""
    if len(data) < _HEADER.size + _CHECK.size:
        return None
    view = memoryview(data)[:-_CHECK.size]
    if _CHECK.unpack_from(data, len(view))[0] != zlib.crc32(view):
        return None
    magic, dev, ino, size, mtime_ns, count, digest = _HEADER.unpack_from(data)
    # Not st_dev: nodes sharing the spool over NFS each number the mount
    # their own way; the inode number is the server's and the same for all.
    if (magic != MAGIC or ino != st.st_ino or size > st.st_size
            or count > size // MIN_MESSAGE + 1 or (size and not count)
            or len(view) != _HEADER.size + count * _PER_MESSAGE):
        return None
    pos = _HEADER.size
    columns = []
    for _ in range(4):
        column = array("q")
        column.frombytes(view[pos:pos + 8 * count])
        columns.append(column)
        pos += 8 * count
    raw = bytes(view[pos:])
    if raw.translate(None, BASE32):       # anything but base32 characters left
        return None
    if not _positions_in_order(columns, size):
        return None
    octets = columns[3]
    # Octet counts are only reported (STAT, LIST), never used to read:
    # a bound is enough (at most every byte a bare LF, plus a final CRLF).
    if count and (min(octets) < 0 or max(octets) > 2 * size + 2):
        return None
    index = mbox.MboxIndex.from_columns(size, tuple(columns))
    return index, raw.decode("ascii"), digest, mtime_ns


def _positions_in_order(columns, size):
    """0 = offset(0) <= start(0) <= stop(0) <= offset(1) <= ... <= size:
    every read the session makes then stays inside its message's span and
    inside the indexed size.  One ordering test over the interleaved
    positions, in C."""
    offsets, starts, stops, _ = columns
    count = len(offsets)
    if not count:
        return True
    if offsets[0] != 0:
        return False
    seq = array("q", bytes(8 * (3 * count + 1)))
    seq[0:3 * count:3] = offsets
    seq[1:3 * count:3] = starts
    seq[2:3 * count:3] = stops
    seq[-1] = size
    return all(map(operator.le, seq, seq[1:]))
