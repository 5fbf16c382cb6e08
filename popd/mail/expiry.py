"""RFC 2449 EXPIRE: retrieved mail leaves the server after mail.expire_days.

Runs in: the session child, as the mailbox owner.

A message is due when a client retrieved it (RETR, not TOP) in a session
that ended with QUIT at least `expire_days` days ago; `expire_days: 0` is
the RFC's "EXPIRE 0": what a session retrieves is removed when that same
session quits.  Days count from the first retrieval, which is never
earlier than the message's arrival, so every message removed is also that
much older than its delivery, and a client that downloads a message is
sure of the server's copy for the whole period.  Due messages are removed
at the next update (any session's QUIT), through the same journal as DELE
(maildrop.py, mbox_update.py): a crash at any point loses nothing else.

When each message was first retrieved is kept in the state directory
(`<key>.retrieved`, one `<uidl> <unix time>` line per message still in
the mailbox), since popd writes nothing into the mail.  A session that
does not reach QUIT records nothing: its retrievals do not count.  The
file is the user's, so it is read strictly; anything off and it is
ignored, which only makes mail stay longer.
"""
import re

from popd.mail import state_files

DAY = 86400
# 100,000 messages at 70 + 12 bytes a line; a larger file is not popd's.
STATE_MAX = 16 << 20
_LINE = re.compile(r"([\x21-\x7e]{1,70}) ([0-9]{1,12})\Z")


def due(ids, retrieved, now, days, this_session=()):
    """Message numbers (0-based) to remove: retrieved at least `days`
    days before `now` (an earlier session), or, with days == 0, also
    those this session retrieved."""
    cutoff = now - days * DAY
    out = {n for n, uid in enumerate(ids) if uid in retrieved and retrieved[uid] <= cutoff}
    if days == 0:
        out.update(this_session)
    return out


def after_session(ids, retrieved, this_session, gone, now):
    """What to remember once the session's retrievals are counted and the
    messages numbered in `gone` are removed: the first retrieval time of
    every message still there that has one."""
    out = {}
    for n, uid in enumerate(ids):
        if n in gone:
            continue
        if uid in retrieved:
            out[uid] = retrieved[uid]
        elif n in this_session:
            out[uid] = now
    return out


def load(path):
    """{uidl: unix time of first retrieval}; {} if absent or off."""
    data = state_files.read(path, STATE_MAX)
    if data is None:
        return {}
    out = {}
    try:
        for line in data.decode("ascii").splitlines():
            m = _LINE.match(line)
            if not m or m.group(1) in out:
                return {}
            out[m.group(1)] = int(m.group(2))
    except UnicodeDecodeError:
        return {}
    return out


def state_bytes(retrieved):
    """The file `save` writes (empty when there is nothing to remember)."""
    return "".join(f"{uid} {t}\n" for uid, t in sorted(retrieved.items())).encode("ascii")


def save(path, retrieved):
    """Write atomically; nothing to remember removes the file."""
    state_files.write(path, state_bytes(retrieved))
