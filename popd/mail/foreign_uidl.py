"""UIDLs another server left in the mbox, kept when a site switches to popd.

Runs in: the session child, as the mailbox owner.

Clients that leave mail on the server remember it by UIDL; new ids after a
migration make every one of them download everything again.  With
`mail.uidl_source` naming other servers' schemes, each message's id is
taken, the first time popd opens the maildrop, from the first source in the
list that gives one for it:

- `x-uidl`: the message's first `X-UIDL:` header (qpopper, GNU Mailutils
  pop3d, and Dovecot's pop3_reuse_xuidl).
- `dovecot`: Dovecot's default pop3_uidl_format `%08Xu%08Xv`: the
  message's `X-UID:` and the UIDVALIDITY of the `X-IMAPbase:` header of the
  file's first message, as 8 lower-case hex digits each (what Dovecot 2.3
  prints).  X-UIDs must rise strictly in file order, as Dovecot requires.
- `popd`: popd's own id (uidl.py), which every message falls back to.

An id from the file must be 1-70 characters in 0x21-0x7E (RFC 1939), must
not have the shape of popd's own ids (so the two can never collide) and
must not repeat an id an earlier message took; otherwise the next source is
tried, and the refusal is logged.

Why only once: those headers are in the mail, and a sender can put any
`X-UIDL:` in a new message.  Read at every open, a forged one could take
the id of a message a client has already downloaded and deleted, and that
client would then never fetch the new message.  So the ids read at the
first open are remembered in the state directory (`<key>.foreign`: the
popd base ids of the messages and their foreign ids, in file order) and
mail that arrives later gets popd's ids, whatever headers
it carries.  popd still writes nothing into the mail.  The map is used
whenever it exists, whatever `mail.uidl_source` now says: ids handed out
must not change.  The file is owned by the user and read strictly; if it is
off in any way it is rebuilt from the headers at the next open.
"""
import re

from popd.config import UIDL_SOURCES
from popd.mail import state_files, uidl
from popd.unix.logsetup import log, sanitize

FOREIGN = frozenset(UIDL_SOURCES) - {"popd"}
MAGIC = "popd-foreign-ids 2"
# 100,000 messages with 70-character ids need 9.6 MB; a larger file is
# not one popd wrote for any mbox it can serve.
MAP_MAX = 16 << 20
# Refusals logged one by one per open; the rest are counted.
LOGGED_REFUSALS = 5
UID_MAX = 2**32 - 1

_HEADER = re.compile(rb"^(x-uidl|x-uid|x-imapbase)[ \t]*:[ \t]*([^\n]*)\n?", re.I | re.M)
_VALID = re.compile(r"[\x21-\x7e]{1,70}\Z")
# What a map file may hold; what is left of a line of base ids once
# base32 is taken out.
_MAP_BYTES = bytes(range(0x21, 0x7f)) + b" \n"
_NOT_BASE32 = str.maketrans("", "", "abcdefghijklmnopqrstuvwxyz234567")


def _fields(head):
    """{name: value} of the first X-UIDL, X-UID and X-IMAPbase header of a
    head (From line and headers), values stripped; a folded value (the
    next line starts with blank space) is None: no server writes one."""
    found = {}
    for m in _HEADER.finditer(head):
        name = m.group(1).lower()
        if name in found:
            continue
        value = m.group(2).strip(b" \t\r")
        folded = head[m.end():m.end() + 1] in (b" ", b"\t")
        try:
            found[name] = None if folded else value.decode("ascii")
        except UnicodeDecodeError:
            found[name] = None
    return found


def valid(uid):
    """Usable as a UIDL here: RFC 1939's characters and length, and not
    shaped like popd's own ids."""
    return (uid is not None and _VALID.match(uid) is not None
            and uidl.popd_shaped(uid) is None)


class _Reader:
    """Walks the messages in file order, remembering what the Dovecot
    scheme needs from earlier messages."""

    def __init__(self, sources):
        self.sources = [s for s in sources if s in FOREIGN]
        self.uidvalidity = None
        self.last_uid = 0
        self.taken = set()
        self.refused = []           # (message number, source, reason)
        self.counts = dict.fromkeys(self.sources, 0)

    def first_head(self, fields):
        base = fields.get(b"x-imapbase")
        token = base.split()[0] if base and base.split() else ""
        if token.isdigit() and 0 < int(token) <= UID_MAX:
            self.uidvalidity = int(token)

    def id_for(self, n, fields):
        for source in self.sources:
            uid, reason = self._candidate(source, fields)
            if uid is None:
                if reason:
                    self.refused.append((n, source, reason))
                continue
            if uid in self.taken:
                self.refused.append((n, source, f"{uid} is an earlier message's id"))
                continue
            self.taken.add(uid)
            self.counts[source] += 1
            return uid
        return None

    def _candidate(self, source, fields):
        """(id, None), or (None, why it was refused), or (None, None) when
        the message has nothing for this source."""
        if source == "x-uidl":
            if b"x-uidl" not in fields:
                return None, None
            value = fields[b"x-uidl"]
            if not valid(value):
                return None, f'X-UIDL "{sanitize(value or "", 80)}" is not a valid id'
            return value, None
        if b"x-uid" not in fields:
            return None, None
        value = fields[b"x-uid"]
        if self.uidvalidity is None:
            return None, "no X-IMAPbase UIDVALIDITY in the first message"
        if not (value and value.isdigit() and 0 < int(value) <= UID_MAX):
            return None, f'X-UID "{sanitize(value or "", 80)}" is not a number 1..{UID_MAX}'
        if int(value) <= self.last_uid:
            return None, f"X-UID {value} does not follow {self.last_uid}"
        self.last_uid = int(value)
        return f"{self.last_uid:08x}{self.uidvalidity:08x}", None


def read(fd, index, bases, sources, path):
    """Per message of `index` (file order; bases: their popd base ids) the
    id from the first source that gives a usable one, or None."""
    reader = _Reader(sources)
    found = []
    for n, head in enumerate(uidl.iter_heads(fd, index)):
        fields = _fields(head)
        if n == 0:
            reader.first_head(fields)
        found.append(reader.id_for(n, fields))
    for n, source, reason in reader.refused[:LOGGED_REFUSALS]:
        log.warning("mailbox %s: message %d keeps popd's id, not the %s one: %s",
                    path, n + 1, source, reason)
    if len(reader.refused) > LOGGED_REFUSALS:
        log.warning("mailbox %s: %d more ids from the file refused",
                    path, len(reader.refused) - LOGGED_REFUSALS)
    taken = sum(reader.counts.values())
    log.info("mailbox %s: UIDLs kept from the file: %s; %d of %d messages have popd's",
             path, ", ".join(f"{s} {c}" for s, c in reader.counts.items()),
             len(bases) - taken, len(bases))
    return found


def place(bases, stored):
    """Per message (file order) its remembered foreign id or None, and
    whether the map must be written again.

    `stored` is (base ids concatenated, ids), as load() returns it, for
    the messages as they were when it was written.  Usually they are still
    the first messages of the file (new mail only appends): one string
    comparison.  Otherwise (another program rewrote the file, or an update
    was interrupted before the map was written) each message is matched
    by its base: copies of one base take its ids in file order, and ids
    of messages gone are dropped."""
    text, ids = stored
    count = len(ids)
    if len(bases) >= count and "".join(bases[:count]) == text:
        return ids + [None] * (len(bases) - count), False
    remembered = {}
    for b, uid in zip(uidl.split(text), ids):
        if uid is not None:
            remembered.setdefault(b, []).append(uid)
    out = [None] * len(bases)
    for i, b in enumerate(bases):
        queue = remembered.get(b)
        if queue:
            out[i] = queue.pop(0)
    return out, True


def load(path):
    """(base ids concatenated, [id or None per message]) from `path`;
    None if absent or not exactly well-formed.  Every check runs over the
    whole text or all ids at once (C loops: a 100,000-message map loads in
    a few tens of ms), never a regex per id."""
    data = state_files.read(path, MAP_MAX)
    if data is None or data.translate(None, _MAP_BYTES):
        return None
    lines = data.decode("ascii").split("\n")
    if len(lines) != 4 or lines[0] != MAGIC or lines[3]:
        return None
    text, ids = lines[1], lines[2].split(" ") if lines[2] else []
    given = [uid for uid in ids if uid]
    # Only ids of 24 characters and more, with "-" or nothing after 24,
    # can have popd's shape: the regex runs on those alone.
    near = [uid for uid in given if uid[24:25] in ("-", "") and len(uid) >= 24]
    if (len(text) != len(ids) * uidl.BASE_LEN or text.translate(_NOT_BASE32)
            or len(set(given)) != len(given) or (given and max(map(len, given)) > 70)
            or any(uidl.popd_shaped(uid) for uid in near)):
        return None
    return text, [uid or None for uid in ids]


def map_bytes(bases, ids):
    """The file `save` writes for messages with these bases and ids (None:
    popd's own).  A map without any foreign id is written empty: it still
    records that the headers were read once."""
    if not any(ids):
        bases, ids = [], []
    return "\n".join([MAGIC, "".join(bases), " ".join(uid or "" for uid in ids), ""]
                     ).encode("ascii")


def save(path, bases, ids):
    """Write `map_bytes(bases, ids)` atomically."""
    state_files.write(path, map_bytes(bases, ids))
