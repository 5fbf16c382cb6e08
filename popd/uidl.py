"""UIDL: unique, stable ids for mbox messages, without writing into them.

Runs in: the session child, as the mailbox owner.

A message's base id is a digest of its `From ` line and its header block,
leaving out the status headers MUAs rewrite (Status, X-Status, X-Keywords,
X-UID, X-IMAP*), so an MUA marking mail read does not renumber it.
Identical messages share a base; the first keeps the bare base and later
ones get `-2`, `-3`, ...  Which copy holds which suffix is remembered in
the state directory (`<key>.uidl`), so deleting one of two identical
messages never hands its id to the other, and a new identical arrival gets
a suffix never used before.  The file is owned by the user: it is parsed
strictly and, if anything in it is off, ignored (ids of duplicates may
then change, which is the only cost).

Ids are 24 base32 characters, or that plus `-N`: within RFC 1939's 1-70
characters in 0x21-0x7E.
"""
import base64
import hashlib
import os
import re

# Header names (lower case) whose changes must not change the id.
STATUS_HEADERS = (b"status:", b"x-status:", b"x-keywords:", b"x-uid:", b"x-imap")
HEAD_READ = 4096           # first read of a message's headers
HEAD_MAX = 64 * 1024       # headers beyond this are not part of the digest
STATE_MAX = 1 << 20        # a state file larger than this is ignored
_BASE = re.compile(r"[a-z2-7]{24}\Z")
_SUFFIXED = re.compile(r"([a-z2-7]{24})(?:-([1-9][0-9]{0,5}))?\Z")


def header_block(fd, index, n):
    """The From line plus the headers of message n (up to HEAD_MAX)."""
    offset, end = index.offset(n), index.end(n)
    size = HEAD_READ
    while True:
        data = os.pread(fd, min(size, end - offset), offset)
        cut = _blank_line(data, index.start(n) - offset)
        if cut >= 0 or len(data) >= end - offset or size >= HEAD_MAX:
            return data[:cut] if cut >= 0 else data
        size *= 4


def _blank_line(data, body_from):
    lf = data.find(b"\n\n", body_from - 1 if body_from else 0)
    crlf = data.find(b"\n\r\n", body_from - 1 if body_from else 0)
    found = [i for i in (lf, crlf) if i >= 0]
    return min(found) + 1 if found else -1


def base_id(head):
    """Digest of the header block with status headers (and their
    continuation lines) left out."""
    h = hashlib.blake2b(digest_size=15)
    skipping = False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                h.update(line.rstrip(b"\r") + b"\n")
            continue
        skipping = line.lower().startswith(STATUS_HEADERS)
        if not skipping:
            h.update(line.rstrip(b"\r") + b"\n")
    return base64.b32encode(h.digest()).decode("ascii").lower()


def compute_bases(fd, index, first=0):
    return [base_id(header_block(fd, index, n)) for n in range(first, len(index))]


def assign(bases, state):
    """Ids for `bases` (file order) given the remembered state
    {base: (next_suffix, [ids in file order])}; returns (ids, new_state)."""
    positions = {}
    for i, b in enumerate(bases):
        positions.setdefault(b, []).append(i)
    ids = [None] * len(bases)
    new_state = {}
    for b, where in positions.items():
        following, remembered = state.get(b, (2, [b]))
        assigned = remembered[:len(where)]
        while len(assigned) < len(where):       # new identical arrivals
            assigned.append(f"{b}-{following}")
            following += 1
        for i, uid in zip(where, assigned):
            ids[i] = uid
        if (following, assigned) != (2, [b]):
            new_state[b] = (following, assigned)
    return ids, new_state


def after_deletion(ids, deleted, state):
    """The state to remember once the messages at `deleted` are gone."""
    kept = [uid for i, uid in enumerate(ids) if i not in deleted]
    new_state = {}
    for b, (following, _) in state.items():
        remaining = [uid for uid in kept if uid == b or uid.startswith(b + "-")]
        if remaining and (following, remaining) != (2, [b]):
            new_state[b] = (following, remaining)
        elif not remaining and following > 2:
            # Keep the counter: a later identical arrival must not get an
            # id a client may still remember for a deleted copy.
            new_state[b] = (following, [])
    return new_state


def load_state(path):
    """Parse `<key>.uidl`; {} if absent or not exactly well-formed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        data = os.read(fd, STATE_MAX + 1)
    finally:
        os.close(fd)
    if len(data) > STATE_MAX:
        return {}
    state = {}
    try:
        for line in data.decode("ascii").splitlines():
            base, following, *ids = line.split(" ")
            if (not _BASE.match(base) or not following.isdigit() or base in state
                    or len(set(ids)) != len(ids)):
                return {}
            for uid in ids:
                m = _SUFFIXED.match(uid)
                if not m or m.group(1) != base or (m.group(2) and int(m.group(2)) >= int(following)):
                    return {}
            state[base] = (int(following), ids)
    except (UnicodeDecodeError, ValueError):
        return {}
    return state


def save_state(path, state):
    """Write atomically (temporary file + rename in the state directory)."""
    if not state:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    text = "".join(f"{b} {following} {' '.join(ids)}".rstrip() + "\n"
                   for b, (following, ids) in sorted(state.items()))
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                 | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
