"""Logged-in sessions as the supervisor sees them: who holds which
maildrop, and whether each session's child is still making progress.

Runs in: the supervisor.  Nothing here trusts the session: a granted
child runs as the mailbox owner, and the owner (a shell user on the same
host) may stop it, or delete any file in its per-uid state directory.  So
the one-session-per-maildrop rule and the bound on how long a session may
hold its slot are kept here, from what the broker granted and what the
kernel says about the child (/proc/<pid>/status), never from the child's
word or from a file the owner can touch.

Maildrops.  A grant claims its mailbox path.  A path held by a live child
is not handed out again: the new grant waits up to SESSION_HANDOFF_WAIT
for the holder's child to exit (a client that sends QUIT and logs in at
once finds its old child still exiting for a few milliseconds), then gets
[IN-USE].  At most one grant waits per maildrop; others are refused at
once.  `limits.max_sessions_per_uid`, when set, also caps the sessions of
one uid across mailboxes (virtual users sharing a uid).

Progress.  Every SESSION_WATCH_INTERVAL the supervisor samples each
granted child's State and context-switch counts.  A child in state T
(SIGSTOP, SIGTSTP: nothing popd does) for SESSION_STOPPED_GRACE is killed;
so is one whose counts have not moved for idle_timeout plus
SESSION_STALL_GRACE -- a child that honoured its own idle timeout would
have woken up (and exited) before that.
"""
import collections
import time

from popd import limits


def sample(pid):
    """(state letter, voluntary + involuntary context switches) of a live
    process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read()
    except OSError:
        return None
    state, switches = "?", 0
    for line in text.split(b"\n"):
        if line.startswith(b"State:"):
            state = line[6:].strip()[:1].decode("ascii", "replace")
        elif line.startswith((b"voluntary_ctxt_switches:",
                              b"nonvoluntary_ctxt_switches:")):
            switches += int(line.rsplit(None, 1)[1])
    return state, switches


class Watch:
    """The last sample of one granted child and since when it holds."""

    __slots__ = ("switches", "moved", "stopped_since", "next_sample")

    def __init__(self, now):
        self.switches = None
        self.moved = now
        self.stopped_since = None
        self.next_sample = now


def stall_reason(pid, watch, now, idle_timeout):
    """Why this child must be killed now, or None.  Samples at most every
    SESSION_WATCH_INTERVAL."""
    if now < watch.next_sample:
        return None
    watch.next_sample = now + limits.SESSION_WATCH_INTERVAL
    seen = sample(pid)
    if seen is None:
        return None                       # exited: the pidfd will say so
    state, switches = seen
    if state == "T":
        if watch.stopped_since is None:
            watch.stopped_since = now
        elif now - watch.stopped_since >= limits.SESSION_STOPPED_GRACE:
            return f"stopped for {now - watch.stopped_since:.0f} s"
    else:
        watch.stopped_since = None
    if switches != watch.switches:
        watch.switches, watch.moved = switches, now
    elif now - watch.moved >= idle_timeout + limits.SESSION_STALL_GRACE:
        return f"no progress for {now - watch.moved:.0f} s"
    return None


class Maildrops:
    """Which slot holds which maildrop; at most one waiting grant each."""

    def __init__(self):
        self.holder = {}                  # mbox path -> slot id
        self.waiting = {}                 # mbox path -> (slot id, until)
        self.per_uid = collections.Counter()
        self.held_by = {}                 # slot id -> (mbox path, uid)

    def claim(self, slot_id, mbox, uid, max_per_uid, alive):
        """'ok' (now held), 'wait' (queued behind a live holder) or
        'refuse'.  `alive(slot_id)` says whether a holder's child still
        runs."""
        holder = self.holder.get(mbox)
        if holder is not None and not alive(holder):
            self.release(holder)
            holder = None
        if max_per_uid and self.per_uid[uid] >= max_per_uid:
            return "refuse"
        if holder is None:
            self._hold(slot_id, mbox, uid)
            return "ok"
        if mbox in self.waiting:
            return "refuse"
        self.waiting[mbox] = (slot_id, uid,
                              time.monotonic() + limits.SESSION_HANDOFF_WAIT)
        return "wait"

    def _hold(self, slot_id, mbox, uid):
        self.holder[mbox] = slot_id
        self.per_uid[uid] += 1
        self.held_by[slot_id] = (mbox, uid)

    def release(self, slot_id):
        """The slot's child is gone (or never held): free what it held and
        drop any wait it had.  Returns the slot id that now holds the
        freed maildrop (a waiter to be told), or None."""
        for mbox, (waiter, _, _) in list(self.waiting.items()):
            if waiter == slot_id:
                del self.waiting[mbox]
        held = self.held_by.pop(slot_id, None)
        if held is None:
            return None
        mbox, uid = held
        del self.holder[mbox]
        self.per_uid[uid] -= 1
        if not self.per_uid[uid]:
            del self.per_uid[uid]
        waiter = self.waiting.pop(mbox, None)
        if waiter is None:
            return None
        self._hold(waiter[0], mbox, waiter[1])
        return waiter[0]

    def expired_waits(self, now):
        """Slot ids whose wait for a maildrop ran out: to be refused."""
        late = [m for m, (_, _, until) in self.waiting.items() if now >= until]
        return [self.waiting.pop(m)[0] for m in late]
