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


_BUNDLE_MAGIC = b"popd-pending 1\n"


def write_bundle(path, files):
    """Write several files' next contents ({name: bytes}, b"" meaning the
    file is to be removed) as one file, atomically: maildrop.py writes the
    state an update leaves before the update commits, and makes it current
    (read_bundle, then write) only once the update is sure to complete."""
    data = bytearray(_BUNDLE_MAGIC)
    for name, content in sorted(files.items()):
        data += b"%s %d\n" % (name.encode("ascii"), len(content)) + content
    write(path, bytes(data))


def read_bundle(path, names, limit):
    """{name: bytes} from write_bundle's file, or None if it is absent or
    anything in it is off (a name not in `names`, a length that does not
    fit, more than `limit` bytes): the owner may have written it."""
    data = read(path, limit)
    if data is None or not data.startswith(_BUNDLE_MAGIC):
        return None
    files, pos = {}, len(_BUNDLE_MAGIC)
    while pos < len(data):
        end = data.find(b"\n", pos, pos + 64)
        if end < 0:
            return None
        name, _, length = data[pos:end].decode("ascii", "replace").partition(" ")
        if name not in names or name in files or not length.isdigit():
            return None
        start, stop = end + 1, end + 1 + int(length)
        if stop > len(data):
            return None
        files[name] = data[start:stop]
        pos = stop
    return files
