"""One user's maildrop for one session: open, lock, recover, index, update.

Runs in: the session child, as the mailbox owner (no capabilities).

Locks are taken at open (to recover an interrupted update and to scan) and
at update (QUIT after DELE), never in between, so the MDA is never blocked
for the length of a session: fcntl always (what postfix, exim, procmail and
dovecot-lda take), then the dot-lock where one can be made (directly when
the owner may create `<mbox>.lock`, or through the lock helper holding
`mail.dotlock_group`).  A second session on the same maildrop is kept out
by the supervisor (sessions.py), which the owner cannot touch; the fcntl
lock on `<state>/<key>.session`, held for the whole session, is a second
line (the owner may delete that file) and, with a state directory shared
by several nodes, the one that holds across them.  The key is a digest of the
mbox path, so virtual users sharing a uid do not collide.  Journal, index
cache, UID state (uidl.py), ids kept from another server (foreign_uidl.py),
first retrievals for EXPIRE (expiry.py), the state an update leaves until
it completes (`.pending`, update() says why) and the session lock all live
in the per-uid state directory, never in the spool.
"""
import fcntl
import hashlib
import os
import stat
import time

from popd import limits
from popd.mail import (expiry, foreign_uidl, index_cache, locking, mbox, mbox_update,
                       state_files, uidl)
from popd.unix.logsetup import log


# The pending state holds the three state files at their own bounds.
_PENDING_MAX = uidl.STATE_MAX + foreign_uidl.MAP_MAX + expiry.STATE_MAX + 256


class MailboxError(Exception):
    """(RFC 3206 code, client text); the log line is written where raised."""

    def __init__(self, code, text):
        super().__init__(code, text)
        self.code, self.text = code, text


def state_key(path):
    """The name its state files share in the owner's state directory."""
    return hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:20]


class Maildrop:
    def __init__(self, path, uid, state_dir, lock_helper=None,
                 uidl_source=("popd",), expire_days=None):
        self.path = path
        self.uid = uid
        base = os.path.join(state_dir, str(uid), state_key(path))
        self.journal = base + ".journal"
        self.index_file = base + ".index"
        self.uid_state = base + ".uidl"
        self.foreign_file = base + ".foreign"
        self.retrieved_file = base + ".retrieved"
        self.uidl_source = uidl_source
        self.expire_days = expire_days
        self.session_lock = base + ".session"
        # The state files an update leaves, written before it commits
        # (update() says why).
        self.pending_file = base + ".pending"
        self.lock_helper = lock_helper
        self.fd = None
        self.session_fd = None
        self.index = mbox.MboxIndex()
        self._ids = None
        self._state = None
        self._stored = None         # the ids kept from another server (foreign_uidl.load)
        self._foreign = None        # per message: the id kept from another server, or None
        # UIDL base ids of the indexed messages, 24 characters each,
        # concatenated: the index cache's form (split only for UIDL).
        self._base_text = ""

    # -- open --------------------------------------------------------------------
    def open(self):
        self._take_session_lock()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_NOCTTY
                         | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            self._take_foreign_ids()              # an empty maildrop: nothing to take
            return self
        except OSError as e:
            log.error("mailbox %s: cannot open as uid %d: %s", self.path,
                      self.uid, e.strerror)
            raise MailboxError("SYS/PERM", "Cannot open the mailbox") from None
        self.fd = fd
        self._check_file()
        exclusive = os.path.lexists(self.journal)
        with self._locked(exclusive):
            if exclusive:
                try:
                    outcome = mbox_update.recover(fd, self.journal,
                                                  before_finish=self._make_pending_current)
                except mbox_update.UpdateError as e:
                    log.error("mailbox %s: cannot finish an interrupted update: %s",
                              self.path, e)
                    raise MailboxError(e.code, e.text) from None
                if outcome != "none":
                    log.warning("mailbox %s: interrupted update %s", self.path, outcome)
            # Left by an update that never committed: it deleted nothing.
            self._drop_pending()
            cached = None if exclusive else index_cache.load(self.index_file, fd)
            if cached is not None:
                self.index, self._base_text = cached
            else:
                try:
                    self.index = mbox.scan(fd)
                except mbox.MboxFormatError as e:
                    log.error("mailbox %s: not an mbox file: %s", self.path, e)
                    raise MailboxError("SYS/PERM", "Mailbox is damaged") from None
            known = len(self._base_text) // uidl.BASE_LEN
            if known < len(self.index):
                # New mail (or no cache): its UIDL bases now, while the
                # lock guarantees the bytes match the index, from a second
                # read of the heads alone (about a fifth of the scan's time),
                # so that the cache is written once, complete, and a repeat
                # open with no new mail writes nothing.
                self._base_text += uidl.base_text(fd, self.index, first=known)
                self._save_index()
            self._take_foreign_ids()
        return self

    def _take_foreign_ids(self):
        """Load the ids kept from another server; at the first open with
        mail.uidl_source naming one, read them from the headers, once
        (foreign_uidl.py says why), while the lock guarantees the bytes
        match the index."""
        self._stored = foreign_uidl.load(self.foreign_file)
        if self._stored is not None or not foreign_uidl.FOREIGN.intersection(self.uidl_source):
            return
        bases = uidl.split(self._base_text)
        found = []
        if self.fd is not None and bases:
            found = foreign_uidl.read(self.fd, self.index, bases, self.uidl_source, self.path)
        self._save_foreign(bases, found)
        self._stored = ("".join(bases), found) if any(found) else ("", [])

    def _save_foreign(self, bases, ids):
        try:
            foreign_uidl.save(self.foreign_file, bases, ids)
        except OSError as e:
            log.error("state %s: cannot save the ids kept from the file: %s",
                      self.foreign_file, e.strerror)

    def _save_index(self):
        try:
            index_cache.save(self.index_file, self.fd, self.index, self._base_text)
        except OSError as e:
            log.warning("state %s: cannot save the index: %s", self.index_file, e.strerror)

    def _take_session_lock(self):
        try:
            fd = os.open(self.session_lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        except OSError as e:
            log.error("state %s: %s", self.session_lock, e.strerror)
            raise MailboxError("SYS/TEMP", "Cannot use the state directory") from None
        try:
            # fcntl, not flock: the lock NFSv4 carries to the server, so a
            # state directory shared by several nodes keeps one session
            # per maildrop across all of them (popd(8), "Several nodes").
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            os.close(fd)
            raise MailboxError("IN-USE", "Mailbox is in use by another session") from None
        self.session_fd = fd

    def _check_file(self):
        """A regular file, owned by the uid, with one link: a symlink (also
        refused by O_NOFOLLOW) or a hard link planted by someone else, or a
        file of another owner, is not this user's mailbox."""
        st = os.fstat(self.fd)
        problem = None
        if not stat.S_ISREG(st.st_mode):
            problem = "not a regular file"
        elif st.st_uid != self.uid:
            problem = f"owned by uid {st.st_uid}, not {self.uid}"
        elif st.st_nlink != 1:
            problem = f"has {st.st_nlink} hard links"
        if problem:
            log.error("mailbox %s: refused: %s", self.path, problem)
            raise MailboxError("SYS/PERM", "Mailbox is not usable")

    # -- locks ---------------------------------------------------------------
    def _locked(self, exclusive):
        return _Locks(self, exclusive)

    # -- UIDs ------------------------------------------------------------------
    def ids(self):
        if self._ids is None:
            bases = uidl.split(self._base_text)
            self._foreign, moved = foreign_uidl.place(bases, self._stored or ("", []))
            if moved:
                self._save_foreign(bases, self._foreign)
            # popd's own ids for the rest (suffixes counted among them).
            own = [n for n, uid in enumerate(self._foreign) if uid is None]
            stored = uidl.load_state(self.uid_state)
            assigned, self._state = uidl.assign([bases[n] for n in own], stored)
            if self._state != stored:
                self._save_state(self._state)
            self._ids = list(self._foreign)
            for n, uid in zip(own, assigned):
                self._ids[n] = uid
        return self._ids

    def _save_state(self, state):
        try:
            uidl.save_state(self.uid_state, state)
        except OSError as e:
            log.error("state %s: cannot save UIDs: %s", self.uid_state, e.strerror)

    # -- update ------------------------------------------------------------------
    def expiring(self, retrieved):
        """Message numbers EXPIRE removes at this update, `retrieved` being
        those this session retrieved (expiry.py)."""
        if self.expire_days is None or self.fd is None:
            return set()
        return expiry.due(self.ids(), expiry.load(self.retrieved_file), time.time(),
                          self.expire_days, retrieved)

    def update(self, deleted, retrieved=()):
        """Remove the messages numbered in `deleted` (0-based), keeping
        everything else, including mail delivered since the session began;
        with EXPIRE, also count the session's retrievals (`retrieved`)."""
        if self.fd is None or not (deleted or (retrieved and self.expire_days is not None)):
            return
        ids = self.ids()
        retrieved_after = None
        if self.expire_days is not None:
            retrieved_after = expiry.after_session(
                ids, expiry.load(self.retrieved_file), set(retrieved), set(deleted),
                int(time.time()))
        if not deleted:
            self._save_retrieved(retrieved_after)
            return
        # The state files name messages by id, and after the deletion the
        # ids of identical messages depend on which copy went: the state
        # they leave must change with the mbox, not after it (a crash in
        # between would let a kept copy take a deleted one's id).  So it
        # is written first, and made current after the mbox holds the
        # result and before the journal goes; a crash in between leaves
        # the journal, whose replay at the next open makes it current.
        gone = set(deleted)
        after = {"uidl": uidl.state_bytes(uidl.after_deletion(ids, gone, self._state))}
        if any(self._foreign):
            kept = [n for n in range(len(ids)) if n not in gone]
            bases = uidl.split(self._base_text)
            after["foreign"] = foreign_uidl.map_bytes([bases[n] for n in kept],
                                                      [self._foreign[n] for n in kept])
        if retrieved_after is not None:
            after["retrieved"] = expiry.state_bytes(retrieved_after)
        with self._locked(True):
            try:
                state_files.write_bundle(self.pending_file, after)
            except OSError as e:
                log.error("state %s: cannot write: %s; nothing deleted", self.pending_file,
                          e.strerror)
                raise MailboxError("SYS/TEMP", mbox_update.FAILED_TEXT) from None
            # apply_deletions first checks that the indexed part is
            # exactly what the session saw (appends are fine): an MUA
            # that rewrote the file meanwhile means nothing is deleted.
            try:
                mbox_update.apply_deletions(self.fd, self.index, gone, self.journal,
                                            before_finish=self._make_pending_current)
            except mbox_update.UpdateError as e:
                log.error("mailbox %s: update %s: %s", self.path,
                          "interrupted, finishes at the next login" if e.committed
                          else "refused, nothing deleted", e)
                if not e.committed:
                    self._drop_pending()
                raise MailboxError(e.code, e.text) from None

    def _state_targets(self):
        return {"uidl": self.uid_state, "foreign": self.foreign_file,
                "retrieved": self.retrieved_file}

    def _make_pending_current(self):
        """Replace the state files with what the committed update left."""
        targets = self._state_targets()
        files = state_files.read_bundle(self.pending_file, targets, _PENDING_MAX)
        for name, data in (files or {}).items():
            state_files.write(targets[name], data)
        self._drop_pending()

    def _drop_pending(self):
        try:
            os.unlink(self.pending_file)
        except FileNotFoundError:
            pass

    def _save_retrieved(self, retrieved):
        try:
            expiry.save(self.retrieved_file, retrieved)
        except OSError as e:
            log.error("state %s: cannot save retrievals: %s", self.retrieved_file, e.strerror)

    def close(self):
        for fd in (self.fd, self.session_fd):
            if fd is not None:
                os.close(fd)
        self.fd = self.session_fd = None


class _Locks:
    """The dot-lock first, then fcntl, released in reverse; a bounded wait
    on each, then [IN-USE].  procmail, postfix and liblockfile take the
    dot-lock first and then block on fcntl while holding it: taking them in
    the other order would make popd and a delivery wait on each other until
    the timeout.  The dot-lock is taken for the shared lock of a scan too:
    a writer that takes only the dot-lock would otherwise be scanned
    half-way through a message."""

    def __init__(self, drop, exclusive):
        self.drop = drop
        self.exclusive = exclusive
        self.dotlock = None

    def __enter__(self):
        drop = self.drop
        try:
            dot = drop.lock_helper or locking.DotLock(drop.path)
            if dot.acquire(limits.MAILBOX_LOCK_WAIT):
                self.dotlock = dot
            locking.fcntl_lock(drop.fd, self.exclusive, limits.MAILBOX_LOCK_WAIT)
        except (locking.LockBusy, locking.LockHelperError) as e:
            self.__exit__()
            log.warning("mailbox %s: cannot lock: %s", drop.path,
                        e or f"still locked after {limits.MAILBOX_LOCK_WAIT:.0f} s")
            raise MailboxError("IN-USE", "Mailbox is locked, try again later") from None
        return self

    def __exit__(self, *exc):
        locking.fcntl_unlock(self.drop.fd)
        if self.dotlock is not None:
            self.dotlock.release()
            self.dotlock = None
        return False

