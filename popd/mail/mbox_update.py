"""Crash-safe removal of deleted messages from an mbox (runs in the session child).

The caller is the session child, running as the mailbox owner (never root),
holding the mailbox's fcntl write lock and dot-lock.  This module never
opens the mailbox and never locks: it works on the caller's descriptor, and
on one journal file whose path the caller chooses inside the per-uid state
directory, never next to the mbox (the owner may not be able to create
files in the spool, and other users' mailboxes live there).

API
===

``verify_unchanged(fd, index) -> bool``
    Re-scans ``[0, index.size)`` and compares with the session's index:
    false if the file was rewritten (an MUA added a ``Status:`` header,
    another program expunged), truncated, or unlinked/replaced by a rename
    (``st_nlink == 0``).  Whole messages appended after ``index.size`` are
    fine; anything else there (the rest of a message the index ends
    inside) is not.

``apply_deletions(fd, index, deleted, journal_path, io=REAL_IO, chunk=COPY_CHUNK,
before_finish=None)``
    ``-> (kept, removed_bytes)``: removes the raw spans ``[offset(n), end(n))``
    of the messages in ``deleted`` (0-based), keeping every other byte,
    including mail appended since the index was built.  ``kept`` counts the
    indexed messages kept (appended ones are not counted).  It calls
    :func:`verify_unchanged` itself: the caller need not.  The file is
    compacted in place (same inode, owner and mode; the spool directory
    need not be writable).  ``before_finish()`` runs after the mbox holds
    the result and before the journal is removed (maildrop.py makes the
    session's state files current there).  Raises :class:`UpdateError`.

``recover(fd, journal_path, io=REAL_IO, chunk=COPY_CHUNK, before_finish=None) -> str``
    At the next open, under the write lock, before scanning.  Returns
    ``"none"`` (no journal), ``"discarded"`` (a journal without a valid
    commit record: the update died before touching the mbox; the journal
    is deleted), ``"replayed"`` (the interrupted update was completed) or
    ``"stale"`` (a committed journal that does not fit this mbox: it is
    renamed to ``<journal>.stale-<UTC time>`` and the mbox is not touched;
    the reason is logged here).  ``fd`` may be None when the mbox does not
    exist.  Raises :class:`UpdateError` only for I/O errors (EIO, disk
    full), never because of the journal's content.

``UpdateError``
    ``code`` (``"SYS/TEMP"``), ``text`` (client-safe, one of the ``*_TEXT``
    constants), ``committed`` (true when the journal was committed before
    the failure: the mbox may be half-updated and the next open's
    :func:`recover` completes the deletion; false: nothing was deleted),
    ``str(e)`` the detail for the log.

``REAL_IO``
    The mutating primitives used (open with O_CREAT, pwrite, fsync,
    ftruncate, unlink, rename, fsync_dir, close).  Tests pass a wrapper
    that counts them and SIGKILLs itself at step k.  Reads use ``os.pread``
    directly: they change nothing.

Journal format (version 1, all integers little-endian)
======================================================

::

    0    8  magic       b"popdjrnl"
    8    4  version     u32 = 1
    12   4  flags       u32 = 0
    16   8  dev         u64  st_dev of the mbox (recorded, not compared)
    24   8  ino         u64  st_ino of the mbox
    32   8  target      u64  T: offset of the first deleted message
    40   8  length      u64  L: bytes of data
    48   8  size_before u64  S: mbox size when the journal was written
    56  32  data_sha    SHA-256 of the data
    88  32  trail_sha   SHA-256 of the mbox bytes [T+L, S) before the update
    120  8  commit      b"popdcmit"
    128 32  commit_sha  SHA-256 of b"popdcmit" + bytes [0, 120)
    160  L  data        the bytes that belong at [T, T+L) afterwards

The update means: write data at T, truncate to T+L.  It is written in this
order: data (streamed in ``chunk`` pieces) and header, fsync, commit record,
fsync, fsync of the state directory; only then is the mbox touched: data
copied to T, fsync, truncate to T+L, fsync, journal unlinked, directory
fsynced.

The commit record is a digest of the header and is written only once the
data and header are durable, so a journal cut short anywhere before that
(killed, power cut before an fsync, half-written commit record) has no
valid commit record, and such a journal never touched the mbox.  The data
carries its own digest.  Replaying is idempotent.  Steps of a typical
update with a tail below one chunk: open, pwrite data, pwrite header, fsync,
pwrite commit, fsync, fsync_dir, pwrite into the mbox, fsync, ftruncate,
fsync, unlink, fsync_dir: 13 (each further chunk adds two pwrites; 11
when nothing follows the deleted messages).

Recovery decisions
==================

The journal is owned by the user: hostile input.  The header is 160 fixed
bytes; every field is range-checked (< 2**62, T+L < S, journal size exactly
160+L) before any arithmetic uses it; data is hashed in bounded chunks and
never used for anything but being copied into the mbox it names (same
inode number; not st_dev, which differs between the NFS clients of one
shared spool).  A mailbox owner who forges a journal can only do to their own
mbox what they could do with a shell, since recovery runs as that owner.

Mail may be delivered between a crash and the next open (the fcntl lock
dies with the process), so the size alone cannot tell where the update
stopped.  The copy never writes at or past T+L, so until the truncate the
old bytes ``[T+L, S)`` are intact and ``trail_sha`` matches them:

* current size >= S and ``[T+L, S)`` matches ``trail_sha``: not truncated
  yet.  If mail was appended (size > S), a new journal that also carries
  the appended bytes ``[S, size)`` is committed as ``<journal>.new`` and
  renamed over the old one, then replayed; otherwise replay directly.
* else ``[T, T+L)`` matches ``data_sha``: the truncate happened (perhaps
  followed by deliveries): fsync, remove the journal.
* else: stale.

The one state these checks cannot tell apart: the truncate was done, and
before the next open an MDA appended at least S-T-L bytes whose start is
byte-identical to the cut-off tail (a re-delivery identical down to the
``From `` line's timestamp, within microseconds of the crash).  Recovery
would then cut those bytes again.  Recording more state cannot help: the
mbox cannot hold a marker without the server writing into messages.

Disk full or quota while writing the journal: the partial journal is
removed and nothing else has changed (``UpdateError``, not committed).  A
failure after the commit (an I/O error, or ENOSPC on a copy-on-write
filesystem while overwriting the mbox) leaves the committed journal for the
next open (``UpdateError`` with ``committed`` true).
"""
import hashlib
import os
import stat
import struct
import time

from popd.mail import mbox
from popd.unix.logsetup import log

__all__ = [
    "CHANGED_TEXT",
    "COPY_CHUNK",
    "FAILED_TEXT",
    "PENDING_TEXT",
    "REAL_IO",
    "RealIO",
    "UpdateError",
    "apply_deletions",
    "recover",
    "verify_unchanged",
]

# Copy and hash in pieces of this size: memory stays bounded whatever the
# size of the kept tail (a journal may be as large as the mailbox).
COPY_CHUNK = 1 << 20

MAGIC = b"popdjrnl"
COMMIT_MAGIC = b"popdcmit"
VERSION = 1
_HEADER = struct.Struct("<8sII5Q32s32s")
_COMMIT = struct.Struct("<8s32s")
COMMIT_OFFSET = _HEADER.size                    # 120
DATA_OFFSET = COMMIT_OFFSET + _COMMIT.size      # 160
# Bound on every offset and length read from a journal: far beyond any
# real mbox, and small enough that sums of two fields stay exact.
MAX_FIELD = 1 << 62
NEW_SUFFIX = ".new"

CHANGED_TEXT = "Mailbox changed by another program, nothing deleted"
FAILED_TEXT = "Cannot update the mailbox now, nothing deleted"
PENDING_TEXT = "Mailbox update interrupted, it completes at the next login"


class UpdateError(Exception):
    """The update could not be done; ``str(e)`` is the detail for the log."""

    def __init__(self, detail, text=FAILED_TEXT, committed=False):
        super().__init__(detail)
        self.code = "SYS/TEMP"
        self.text = PENDING_TEXT if committed else text
        self.committed = committed


class _Changed(Exception):
    """A read came back short: a file shrank under us."""


class RealIO:
    """Every operation of this module that changes a file or a directory."""

    def open(self, path, flags, mode=0o600):
        return os.open(path, flags, mode)

    def close(self, fd):
        os.close(fd)

    def pwrite(self, fd, data, offset):
        return os.pwrite(fd, data, offset)

    def fsync(self, fd):
        os.fsync(fd)

    def ftruncate(self, fd, length):
        os.ftruncate(fd, length)

    def unlink(self, path):
        os.unlink(path)

    def rename(self, src, dst):
        os.rename(src, dst)

    def fsync_dir(self, path):
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


REAL_IO = RealIO()


# ------------------------------------------------------------------ helpers

def _pieces(fd, offset, length, chunk):
    """Yield ``[offset, offset+length)`` of ``fd`` in reads of ``chunk``."""
    end = offset + length
    while offset < end:
        n = min(chunk, end - offset)
        data = os.pread(fd, n, offset)
        if len(data) != n:
            raise _Changed(f"short read at offset {offset}")
        yield data
        offset += n


def _digest(fd, offset, length, chunk):
    h = hashlib.sha256()
    for piece in _pieces(fd, offset, length, chunk):
        h.update(piece)
    return h.digest()


def _pwrite_all(io, fd, data, offset):
    view = memoryview(data)
    while view:
        n = io.pwrite(fd, view, offset)
        if n <= 0:                  # never for a regular file; no endless loop
            raise OSError(f"pwrite wrote {n} bytes")
        view = view[n:]
        offset += n


def _commit_record(header):
    return _COMMIT.pack(COMMIT_MAGIC,
                        hashlib.sha256(COMMIT_MAGIC + header).digest())


def _dirname(path):
    return os.path.dirname(path) or "."


def _create_journal(io, path, dev, ino, target, size_before, sources, mbox_fd, chunk):
    """Write, fsync and commit a journal at ``path``, which must not exist.

    ``sources`` are ``(fd, offset, length)`` ranges whose concatenation is
    the data.  On any failure after the file was created it is removed and
    the exception propagates; on success the directory entry is durable.
    """
    jfd = io.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                  | os.O_CLOEXEC, 0o600)
    try:
        try:
            data_sha = hashlib.sha256()
            pos = DATA_OFFSET
            # Kept ranges between deleted messages are often small: gather
            # them into writes of up to one chunk.
            pending = bytearray()
            for sfd, offset, length in sources:
                for piece in _pieces(sfd, offset, length, chunk):
                    data_sha.update(piece)
                    if pending and len(pending) + len(piece) > chunk:
                        _pwrite_all(io, jfd, pending, pos)
                        pos += len(pending)
                        pending = bytearray()
                    pending += piece
            if pending:
                _pwrite_all(io, jfd, pending, pos)
                pos += len(pending)
            length = pos - DATA_OFFSET
            trail_sha = _digest(mbox_fd, target + length,
                                size_before - target - length, chunk)
            header = _HEADER.pack(MAGIC, VERSION, 0, dev, ino, target, length,
                                  size_before, data_sha.digest(), trail_sha)
            _pwrite_all(io, jfd, header, 0)
            io.fsync(jfd)
            # The commit record goes last, alone: until it is durable the
            # journal is worthless and the mbox untouched.
            _pwrite_all(io, jfd, _commit_record(header), COMMIT_OFFSET)
            io.fsync(jfd)
        finally:
            io.close(jfd)
        io.fsync_dir(_dirname(path))
    except BaseException:
        try:
            io.unlink(path)
        except OSError:
            pass                    # recover() discards it: it has no commit
        raise


def _copy_in(io, fd, jfd, target, length, chunk):
    """Carry out a committed journal: data to T, fsync, truncate, fsync."""
    pos = 0
    for piece in _pieces(jfd, DATA_OFFSET, length, chunk):
        _pwrite_all(io, fd, piece, target + pos)
        pos += len(piece)
    # Fsync before truncating: a truncate made durable ahead of the data
    # would leave a file that matches neither side of the update.
    io.fsync(fd)
    io.ftruncate(fd, target + length)
    io.fsync(fd)


def _remove_journal(io, path):
    io.unlink(path)
    io.fsync_dir(_dirname(path))


def _kept_ranges(index, marked, size):
    """``(offset, length)`` of the bytes kept after the first deleted one."""
    ranges = []
    for i, n in enumerate(marked):
        lo = index.end(n)
        hi = index.offset(marked[i + 1]) if i + 1 < len(marked) else size
        if hi > lo:
            ranges.append((lo, hi - lo))
    return ranges


# --------------------------------------------------------------------- API

def verify_unchanged(fd, index):
    """True if ``[0, index.size)`` still scans to ``index`` (see module doc)
    and whatever follows it starts a message.

    Same message boundaries and octet counts is exactly what deleting by
    span needs; a same-length edit inside a message (a status flag flipped
    in place) passes, and is kept, because kept bytes are copied as they
    are now.  Bytes past ``index.size`` are kept as they are, after the
    kept messages: unless they begin with a ``From `` line, they are the
    rest of a message the index ends inside (the scan saw a writer that
    holds neither lock half-way), and the kept copy would join it to
    another message.
    """
    st = os.fstat(fd)
    if st.st_nlink == 0 or st.st_size < index.size:
        return False
    if st.st_size > index.size and not mbox.starts_message(fd, index.size):
        return False
    try:
        return mbox.scan(fd, size=index.size) == index
    except mbox.MboxFormatError:
        return False


def apply_deletions(fd, index, deleted, journal_path, io=REAL_IO, chunk=COPY_CHUNK,
                    before_finish=None):
    """Remove the messages in ``deleted``; see the module docstring.
    ``before_finish()``, if given, runs once the mbox holds the result and
    before the journal is removed: a crash before it returns leaves the
    journal, and recover() says "replayed" at the next open."""
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    marked = sorted(set(deleted))
    if marked and not (0 <= marked[0] and marked[-1] < len(index)):
        raise ValueError(f"message numbers out of range 0..{len(index) - 1}")
    if not marked:
        return len(index), 0
    try:
        unchanged = verify_unchanged(fd, index)
        st = os.fstat(fd)
    except OSError as e:
        raise UpdateError(f"cannot re-read the mailbox: {e}") from None
    if not unchanged:
        raise UpdateError("the mailbox was changed since it was opened "
                          "(not by appending)", CHANGED_TEXT)
    size = st.st_size
    target = index.offset(marked[0])
    keep = _kept_ranges(index, marked, size)
    length = sum(n for _, n in keep)
    try:
        _create_journal(io, journal_path, st.st_dev, st.st_ino, target, size,
                        [(fd, off, n) for off, n in keep], fd, chunk)
    except FileExistsError:
        # recover() runs at every open; a journal now means one appeared
        # during the session.  Leave it for the next open to judge.
        raise UpdateError(f"journal {journal_path} already exists") from None
    except (OSError, _Changed) as e:
        raise UpdateError(f"cannot write journal {journal_path}: {e}") from None
    # Committed: from here a failure leaves the journal for recover().
    try:
        jfd = os.open(journal_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            _copy_in(io, fd, jfd, target, length, chunk)
        finally:
            os.close(jfd)
        if before_finish is not None:
            before_finish()
        _remove_journal(io, journal_path)
    except (OSError, _Changed) as e:
        raise UpdateError(f"update interrupted after the journal "
                          f"{journal_path} was committed: {e}",
                          committed=True) from None
    return len(index) - len(marked), size - target - length


def recover(fd, journal_path, io=REAL_IO, chunk=COPY_CHUNK, before_finish=None):
    """Finish or drop an interrupted update; see the module docstring.
    ``before_finish()`` runs, as in apply_deletions, when the update is
    replayed: after the mbox holds the result, before the journal goes."""
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    try:
        _drop_leftover(io, journal_path + NEW_SUFFIX)
        # Pass 1 may turn an appended-to journal into one that carries the
        # appended mail; pass 2 replays it.  Under the lock the size cannot
        # move again, so a third round means something is wrong.
        for _ in range(2):
            outcome = _recover_once(fd, journal_path, io, chunk, before_finish)
            if outcome != "again":
                return outcome
        return _set_aside(io, journal_path, "mailbox size keeps changing")
    except (OSError, _Changed) as e:
        raise UpdateError(f"cannot recover with journal {journal_path}: "
                          f"{e}", committed=True) from None


def _drop_leftover(io, path):
    """Remove ``<journal>.new``: the rename that would have made it the
    journal never happened, so the journal it was to replace still rules."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        _set_aside(io, path, "a directory")
    else:
        io.unlink(path)


def _set_aside(io, path, reason):
    now = time.time_ns()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 10**9))
    aside = f"{path}.stale-{stamp}.{now % 10**9:09d}Z"
    io.rename(path, aside)
    io.fsync_dir(_dirname(path))
    log.warning("journal %s set aside as %s, mailbox untouched: %s",
                path, aside, reason)
    return "stale"


def _recover_once(fd, path, io, chunk, before_finish):
    try:
        jfd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                      | os.O_CLOEXEC)
    except FileNotFoundError:
        return "none"
    except OSError as e:            # a symlink (ELOOP), a socket (ENXIO)...
        return _set_aside(io, path, f"cannot open: {e.strerror}")
    try:
        return _judge(fd, jfd, path, io, chunk, before_finish)
    finally:
        os.close(jfd)


def _judge(fd, jfd, path, io, chunk, before_finish):
    jst = os.fstat(jfd)
    if not stat.S_ISREG(jst.st_mode) or jst.st_uid != os.geteuid():
        return _set_aside(io, path, "not a regular file of ours")
    head = os.pread(jfd, DATA_OFFSET, 0)
    if (len(head) != DATA_OFFSET
            or head[COMMIT_OFFSET:] != _commit_record(head[:COMMIT_OFFSET])):
        # Torn or never committed: the mbox was not touched yet.
        _remove_journal(io, path)
        return "discarded"
    (magic, version, flags, dev, ino, target, length, size_before,
     data_sha, trail_sha) = _HEADER.unpack(head[:COMMIT_OFFSET])
    if magic != MAGIC or version != VERSION or flags != 0:
        return _set_aside(io, path, "unknown journal format")
    if (target >= MAX_FIELD or length >= MAX_FIELD or size_before >= MAX_FIELD
            or target + length >= size_before):
        return _set_aside(io, path, "header fields out of range")
    if jst.st_size != DATA_OFFSET + length:
        return _set_aside(io, path, f"journal holds {jst.st_size} bytes, "
                          f"header says {DATA_OFFSET + length}")
    if fd is None:
        return _set_aside(io, path, "the mailbox does not exist")
    mst = os.fstat(fd)
    # The inode number only: it is the file server's id for the file, the
    # same on every NFS client, while st_dev is each client's own number
    # for its mount (a node recovering another's journal sees another dev).
    # The digests below decide whether the bytes fit.
    if mst.st_ino != ino:
        return _set_aside(io, path, "journal written for another file")
    size = mst.st_size
    if size < target + length:
        return _set_aside(io, path, "mailbox shorter than the update result")
    try:
        good = _digest(jfd, DATA_OFFSET, length, chunk) == data_sha
    except _Changed:
        good = False                # the journal shrank while we read it
    if not good:
        return _set_aside(io, path, "journal data does not match its digest")
    cut = size_before - target - length
    if size >= size_before and _digest(fd, target + length, cut,
                                       chunk) == trail_sha:
        # Not truncated yet: [T, T+L) may be half copied; the journal has it.
        if size > size_before:
            # Mail delivered since the crash sits after S; carry it in a new
            # journal so that the move is as crash-safe as the first one.
            new = path + NEW_SUFFIX
            _create_journal(io, new, dev, ino, target, size,
                            [(jfd, DATA_OFFSET, length),
                             (fd, size_before, size - size_before)],
                            fd, chunk)
            io.rename(new, path)
            io.fsync_dir(_dirname(path))
            return "again"
        _copy_in(io, fd, jfd, target, length, chunk)
        if before_finish is not None:
            before_finish()
        _remove_journal(io, path)
        return "replayed"
    if _digest(fd, target, length, chunk) == data_sha:
        # Truncated already (mail may have been delivered after it).
        io.fsync(fd)
        if before_finish is not None:
            before_finish()
        _remove_journal(io, path)
        return "replayed"
    return _set_aside(io, path, "mailbox matches neither the state before "
                      "nor the state after the update")
