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
characters in 0x21-0x7E.  Messages whose ids were taken over from another
server (mail.uidl_source) keep those instead (foreign_uidl.py).

Bases are computed when the mailbox is opened, for the messages the index
cache has not seen (maildrop.py), and kept in that cache: a few us a
message, from reads that each hold the heads of many messages.
"""
import base64
import collections
import hashlib
import os
import re

from popd.mail import state_files

# Header names (lower case) whose changes must not change the id.
STATUS_HEADERS = (b"status:", b"x-status:", b"x-keywords:", b"x-uid:", b"x-imap")
HEAD_MAX = 64 * 1024       # headers beyond this are not part of the digest
# compute_bases() reads the mbox in pieces of this size, each holding the
# heads of many messages: one read per piece, not one per message.
RUN = 1 << 20
DIGEST_SIZE = 15           # 120 bits: exactly 24 base32 characters, no padding
BASE_LEN = 24
STATE_MAX = 1 << 20        # a state file larger than this is ignored
_BASE = re.compile(r"[a-z2-7]{24}\Z")
_SUFFIXED = re.compile(r"([a-z2-7]{24})(?:-([1-9][0-9]{0,5}))?\Z")
# Any id of that shape, whatever its suffix: ids taken from other servers
# never have it (foreign_uidl.py), so theirs and popd's cannot collide.
_POPD_SHAPE = re.compile(r"[a-z2-7]{24}(?:-[0-9]+)?\Z")
# A line that may start a status header (same names, any case); a head
# without one, which is nearly every message, is digested in one call.
_STATUS_LINE = re.compile(b"\\n(?:" + b"|".join(map(re.escape, STATUS_HEADERS)) + b")", re.I)
_LINE_END_CRS = re.compile(rb"\r+(?=\n)|\r+\Z")


def header_block(fd, index, n):
    """The From line plus the headers of message n (up to HEAD_MAX)."""
    offset = index.offset(n)
    hi = min(index.end(n), offset + HEAD_MAX)
    buf = os.pread(fd, hi - offset, offset)
    return _head(buf, 0, index.start(n) - offset, hi - offset)


def _head(buf, a, s, hi):
    """The head of the message whose From line starts at buf[a] and whose
    content starts at buf[s], looking no further than buf[hi]: everything
    up to the LF before the first blank line (LF or CRLF), or all of it."""
    lo = s - 1 if s > a else a               # the From line's LF may open "\n\n"
    cut = buf.find(b"\n\n", lo, hi)
    # A "\n\r\n" that starts before `cut` ends before cut + 2.
    crlf = buf.find(b"\n\r\n", lo, cut + 2 if cut >= 0 else hi)
    if crlf >= 0:
        cut = crlf
    return buf[a:cut + 1] if cut >= 0 else buf[a:hi]


def digest(head):
    """Digest of the header block, each line with its trailing CRs dropped,
    status headers (and their continuation lines) left out."""
    # The first line is a From line; one that is not (only a forged index
    # can point elsewhere) also takes the exact path.
    if _STATUS_LINE.search(head) or head[:1] in b"SsXx":
        return _digest_by_line(head)
    # Without status headers the line-by-line digest below hashes exactly
    # the head (CRs before each LF removed) plus one LF.
    if b"\r" in head:
        head = _LINE_END_CRS.sub(b"", head)
    return hashlib.blake2b(head + b"\n", digest_size=DIGEST_SIZE).digest()


def _digest_by_line(head):
    h = hashlib.blake2b(digest_size=DIGEST_SIZE)
    skipping = False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                h.update(line.rstrip(b"\r") + b"\n")
            continue
        skipping = line.lower().startswith(STATUS_HEADERS)
        if not skipping:
            h.update(line.rstrip(b"\r") + b"\n")
    return h.digest()


def split(text):
    """Base ids concatenated (the index cache's form) -> list."""
    return [text[i:i + BASE_LEN] for i in range(0, len(text), BASE_LEN)]


def base_id(head):
    """The base id of one header block."""
    return base64.b32encode(digest(head)).decode("ascii").lower()


def compute_bases(fd, index, first=0):
    """Base ids of messages first.. in file order, as a list."""
    return split(base_text(fd, index, first))


def base_text(fd, index, first=0):
    """Base ids of messages first.. in file order, concatenated (the index
    cache's form: no Python object per message).  About 3 us a message,
    most of it the digest and base32."""
    digests = b"".join(map(digest, iter_heads(fd, index, first)))
    # A 15-byte digest encodes to 24 characters without padding: one
    # base32 call for all of them gives each message's id in turn.
    return base64.b32encode(digests).decode("ascii").lower()


def iter_heads(fd, index, first=0):
    """The head (From line and headers, up to HEAD_MAX) of messages
    first.. in file order.  The heads come from reads of RUN bytes starting
    at a message, each serving every message whose head it holds."""
    offsets, starts, _, _ = index.columns()     # the arrays: no call per field
    ends = offsets[first + 1:]
    ends.append(index.size)
    buf, at = b"", 0                         # buf holds file bytes [at, at + len(buf))
    for offset, start, end in zip(offsets[first:], starts[first:], ends):
        hi = end if end - offset < HEAD_MAX else offset + HEAD_MAX
        if hi > at + len(buf):
            # Read on from this message; of a message longer than a run,
            # only its head window.
            at = offset
            buf = os.pread(fd, hi - offset if end - offset > RUN
                           else min(RUN, index.size - offset), offset)
        yield _head(buf, offset - at, start - at, hi - at)


def is_base(text):
    """A base id as popd makes them."""
    return _BASE.match(text) is not None


def popd_shaped(uid):
    """The match if `uid` has the shape of one of popd's ids, else None."""
    return _POPD_SHAPE.match(uid)


def assign(bases, state):
    """Ids for `bases` (file order) given the remembered state
    {base: (next_suffix, [ids in file order])}; returns (ids, new_state)."""
    # A base seen once and not remembered is its own id: only repeated or
    # remembered bases need the loop.  The set says in C whether any base
    # repeats; the Counter (Python code) runs only when one does.
    distinct = set(bases)
    special = set()
    if len(distinct) < len(bases):
        special = {b for b, k in collections.Counter(bases).items() if k > 1}
    special.update(b for b in state if b in distinct)
    positions = {b: [] for b in special}
    if special:
        for i, b in enumerate(bases):
            if b in special:
                positions[b].append(i)
    ids = list(bases)
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
    data = state_files.read(path, STATE_MAX)
    if data is None:
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


def state_bytes(state):
    """The file `save_state` writes (empty for an empty state)."""
    return "".join(f"{b} {following} {' '.join(ids)}".rstrip() + "\n"
                   for b, (following, ids) in sorted(state.items())).encode("ascii")


def save_state(path, state):
    """Write atomically; an empty state removes the file."""
    state_files.write(path, state_bytes(state))
