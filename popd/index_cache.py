"""The per-maildrop index kept in the state directory, so repeat opens of a
big mbox do not rescan it.

Runs in: the session child, as the mailbox owner.

The cache holds the index columns (offset, start, length, octets) and the
UIDL base digest of each message, with what they were computed from: the
mbox's device, inode, size and mtime, and a digest of samples of the
indexed bytes (the first and last 64 KiB and the head of up to 256 evenly
spaced messages, each of which must still start with `From `).  It is
used only when all of these agree; when the file has grown and the new
bytes start with `From `, only the new part is scanned (mail delivered
since).  Anything else, and any oddity in the file itself, means a full
rescan: the cache is owned by the user, so it is hostile input, bounded
and checked field by field, and it is never trusted for content (RETR
always reads the mbox).  It only spares the scan.
"""
import array
import hashlib
import os
import struct

from . import mbox

MAGIC = b"popdidx1"
_HEADER = struct.Struct("<8sQQQQQ32s")    # magic dev ino size mtime_ns count digest
SAMPLE_EDGE = 64 * 1024
SAMPLE_MESSAGES = 256
SAMPLE_HEAD = 64
BASE_LEN = 24                             # uidl.base_id(): 24 base32 characters
BASE32 = "abcdefghijklmnopqrstuvwxyz234567"
# A message takes at least 6 bytes ("From \n"): bounds the count a cache
# may claim for a given file size.
MIN_MESSAGE = 6


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


def save(path, fd, index, bases):
    """Write the cache atomically (temporary file and rename); a failure
    only costs the next open a scan."""
    st = os.fstat(fd)
    digest = sample_digest(fd, index)
    if digest is None or (bases is not None and len(bases) != len(index)):
        return
    columns = [array.array("q", (getattr(index, name)(i) for i in range(len(index))))
               for name in ("offset", "start", "length", "octets")]
    header = _HEADER.pack(MAGIC, st.st_dev, st.st_ino, index.size, st.st_mtime_ns,
                          len(index), digest)
    body = b"".join([header, *(c.tobytes() for c in columns),
                     b"Y" + "".join(bases).encode("ascii") if bases is not None else b"N"])
    tmp = path + ".tmp"
    fd_out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
    try:
        with open(fd_out, "wb", closefd=False) as f:
            f.write(body)
            # Against torn or damaged files, not against the user (who owns
            # this file and could forge anything: a forged index only
            # misleads their own session, and deletion rescans anyway).
            f.write(hashlib.blake2b(body, digest_size=16).digest())
    finally:
        os.close(fd_out)
    os.rename(tmp, path)


def load(path, fd):
    """(index, bases or None) if the cache fits this mbox, else None.
    A grown file is extended by scanning only its new bytes."""
    st = os.fstat(fd)
    try:
        cfd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        cst = os.fstat(cfd)
        data = os.pread(cfd, cst.st_size, 0) if cst.st_size < (1 << 31) else b""
    finally:
        os.close(cfd)
    parsed = _parse(data, st)
    if parsed is None:
        return None
    index, bases, digest, mtime_ns = parsed
    if index.size == st.st_size and mtime_ns != st.st_mtime_ns:
        return None                       # same size, rewritten: rescan
    if sample_digest(fd, index) != digest:
        return None
    if st.st_size > index.size:
        try:
            mbox.scan(fd, st.st_size, extend=index)
        except mbox.MboxFormatError:
            return None
    return index, bases


def _parse(data, st):
    """Strict decoding of a cache file; None for anything off."""
    if len(data) < _HEADER.size + 1 + 16:
        return None
    data, check = data[:-16], data[-16:]
    if hashlib.blake2b(data, digest_size=16).digest() != check:
        return None
    magic, dev, ino, size, mtime_ns, count, digest = _HEADER.unpack_from(data)
    if (magic != MAGIC or dev != st.st_dev or ino != st.st_ino or size > st.st_size
            or count > size // MIN_MESSAGE + 1 or (size and not count)):
        return None
    pos = _HEADER.size
    columns = []
    for _ in range(4):
        column = array.array("q")
        end = pos + count * column.itemsize
        if end > len(data):
            return None
        column.frombytes(data[pos:end])
        columns.append(column)
        pos = end
    flag = data[pos:pos + 1]
    pos += 1
    bases = None
    if flag == b"Y":
        raw = data[pos:pos + count * BASE_LEN]
        if len(raw) != count * BASE_LEN or not raw.isascii() or pos + len(raw) != len(data):
            return None
        text = raw.decode("ascii")
        if text.strip(BASE32):            # only base32 characters, nothing else
            return None
        bases = [text[i:i + BASE_LEN] for i in range(0, len(text), BASE_LEN)]
    elif flag != b"N" or pos != len(data):
        return None
    offsets, starts, lengths, octets = columns
    if count and offsets[0] != 0:
        return None
    index = mbox.MboxIndex(size)
    for i in range(count):
        # Each message lies inside [its offset, the next one's) and the
        # counts are possible for its length.
        end = offsets[i + 1] if i + 1 < count else size
        if not (offsets[i] < starts[i] <= end and 0 <= lengths[i] <= end - starts[i]
                and lengths[i] <= octets[i] <= 2 * lengths[i] + 2):
            return None
        index.append(offsets[i], starts[i], lengths[i], octets[i])
    return index, bases, digest, mtime_ns
