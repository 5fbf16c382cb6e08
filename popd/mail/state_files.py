"""The per-maildrop files in the state directory: bounded reads, atomic
writes.

Runs in: the session child, as the mailbox owner.

These files (the index cache, UIDL suffixes, ids taken over from another
server, first retrievals for EXPIRE) are owned by the user, so each reader parses them
strictly; this module only bounds what it reads and makes every write all
or nothing (temporary file, fsync, rename in the same directory), so a
crash leaves the old file or the new one, never half of one.
"""
import os


def read(path, limit):
    """The file's bytes, or None if it is absent, not a plain file we can
    open without following a link, or larger than `limit`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    return None if len(data) > limit else data


def write(path, data, durable=True):
    """Replace `path` with `data` atomically; empty data removes it.
    durable=False skips the fsync, for a file that is only a cache: after
    a crash it may be missing or torn, and its reader must notice."""
    if not data:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                 | os.O_CLOEXEC, 0o600)
    try:
        with open(fd, "wb", closefd=False) as f:
            f.write(data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
