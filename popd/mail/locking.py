"""Mailbox locks that the MDAs respect: fcntl and the dot-lock.

Runs in: the session child, before and after it becomes the mailbox owner,
and in the lock helper it forks (slot/lock_helper.py), which runs DotLock
with the dot-lock group.

What the MDAs do (postfix local, exim, procmail, dovecot-lda): they take a
POSIX record lock (fcntl F_SETLK/F_SETLKW on the whole file) and, where they
can, a dot-lock ``<mbox>.lock`` created exclusively.  popd takes both, for
the scan at open and for the update at QUIT, never for a whole session:

- ``fcntl_lock`` / ``fcntl_unlock``: the same lock as ``fcntl.lockf`` (which
  is fcntl F_SETLK, not flock), so it excludes the MDAs whatever the
  dot-lock does.  A bounded wait by polling with LOCK_NB (no SIGALRM), then
  LockBusy.  POSIX locks belong to the process and the file: closing *any*
  descriptor of the mbox in this process drops them, so do not open and
  close the mbox elsewhere while it is locked; they are not inherited by
  fork.
- ``DotLock``: ``<mbox>.lock`` created with O_CREAT|O_EXCL|O_NOFOLLOW and our
  pid as text (``"%d\\n"``, as liblockfile writes; procmail writes ``"0"``,
  dovecot nothing: a content that is not a pid is simply not used).  Another
  holder's lock is waited for (bounded), and broken when stale:

  * its mtime is more than ``stale_after`` seconds away from now *and* the
    mbox has not been modified within ``stale_after`` either (dovecot's
    ``mbox_dotlock_change_timeout`` rule: a slow delivery that is still
    writing keeps its lock), or
  * it holds the pid of a process that no longer exists on this host
    (``os.kill(pid, 0)`` raises ProcessLookupError; EPERM means alive).

  Only a lock that can be a lock is ever broken: a regular file with one
  link, at most 64 bytes, owned by us or by root.  The mailbox of a user
  called ``bob.lock`` (owned by that user) is never taken for bob's stale
  lock.  Right before the unlink the name is lstat'ed again and must still
  be the same inode with the same mtime and size as the one judged; a lock
  created in between is left alone.  (POSIX has no compare-and-unlink: the
  window left is the one between that lstat and the unlink, microseconds,
  as in liblockfile and dovecot.)  ``release()`` removes the name only if it
  is still our inode.  Where we may not create files in the directory
  (EACCES, EPERM, EROFS: Debian's /var/mail without group mail), ``acquire``
  returns False and sets ``unavailable`` to the reason; the caller relies on
  fcntl alone and logs that once.  Any other error is raised.

  Pid checks assume the lock was made on this host in this pid namespace
  (like liblockfile); a spool shared over NFS or with an MDA in another pid
  namespace should rely on the age rule only.

- The lock helper (slot/lock_helper.py): the dot-lock for a spool that
  only group ``mail`` may write into (``mail.dotlock_group``).

Order: procmail, postfix and liblockfile take the dot-lock first and then
the fcntl lock, and block on the fcntl lock while holding the dot-lock.

Every import is at the top: after the privilege drop imports may fail.
"""
import errno
import fcntl
import os
import stat
import time

from popd import limits
from popd.unix.logsetup import WARNING, log

# Results of one attempt at the dot-lock.
OK = "ok"
BUSY = "busy"
UNAVAILABLE = "unavailable"

_UNAVAILABLE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)
_FCNTL_BUSY_ERRNOS = (errno.EACCES, errno.EAGAIN)
_MAX_LOCK_SIZE = 64
_PID_MAX = 1 << 22                   # kernel.pid_max cannot exceed this

POLL_FIRST = 0.01
_POLL_MAX = 0.25


class LockBusy(Exception):
    """Another process holds the lock after the bounded wait: [IN-USE]."""


class LockHelperError(OSError):
    """The lock helper died, hung or answered nonsense."""


# -- fcntl ----------------------------------------------------------------------

def pause(deadline, delay, what):
    now = time.monotonic()
    if now >= deadline:
        raise LockBusy(what)
    time.sleep(min(delay, deadline - now))
    return min(delay * 2, _POLL_MAX)


def fcntl_lock(fd, exclusive, timeout):
    """A POSIX record lock on the whole file (what fcntl.lockf takes and
    what the MDAs take), shared or exclusive; wait at most `timeout` seconds,
    then LockBusy.  An exclusive lock needs fd open for writing.  Errors
    other than "held by someone else" (EBADF, ENOLCK...) are raised."""
    op = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    deadline = time.monotonic() + max(0.0, timeout)
    delay = POLL_FIRST
    while True:
        try:
            fcntl.lockf(fd, op)
            return
        except OSError as e:
            if e.errno not in _FCNTL_BUSY_ERRNOS:
                raise
        delay = pause(deadline, delay,
                      f"fcntl lock still held after {timeout:.1f} s")


def fcntl_unlock(fd):
    fcntl.lockf(fd, fcntl.LOCK_UN)


# -- dot-lock -------------------------------------------------------------------

def _pid_is_dead(pid):
    if not 1 < pid < _PID_MAX:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:                  # alive, someone else's
        return False
    return False


def _parse_pid(data):
    text = data.strip()
    if not text or len(text) > 10 or not text.isdigit():
        return None
    return int(text)


def _same(a, b):
    return ((a.st_dev, a.st_ino, a.st_mtime_ns, a.st_size)
            == (b.st_dev, b.st_ino, b.st_mtime_ns, b.st_size))


class DotLock:
    """``<mbox>.lock`` for one mailbox path; see the module docstring.

    acquire(timeout) -> True (held), False (dot-locking is not possible in
    this directory; ``unavailable`` says why) or raises LockBusy after the
    bounded wait; OSError for anything else.  touch() refreshes the mtime of
    our lock while held (call it during long work, well within
    ``stale_after``); release() removes it if it is still ours.
    """

    def __init__(self, mbox_path, stale_after=limits.DOTLOCK_STALE_AFTER):
        self.mbox_path = os.fspath(mbox_path)
        self.path = self.mbox_path + ".lock"
        self.directory = os.path.dirname(self.path) or "."
        self.stale_after = float(stale_after)
        self.unavailable = None          # reason, once acquire returned False
        self.quiet = False               # the helper has nowhere to log
        self.broken = None               # why the last stale lock was removed
        self._fd = None
        self._ident = None

    @property
    def held(self):
        return self._fd is not None

    def _note(self, level, text, *args):
        if not self.quiet:
            log.log(level, text, *args)

    def acquire(self, timeout):
        deadline = time.monotonic() + max(0.0, timeout)
        delay = POLL_FIRST
        while True:
            result = self.try_once()
            if result == OK:
                return True
            if result == UNAVAILABLE:
                return False
            delay = pause(deadline, delay,
                          f"{self.path} still held after {timeout:.1f} s")

    def try_once(self):
        """One attempt (breaking a stale lock first): OK, BUSY or UNAVAILABLE."""
        self.broken = None
        if self._fd is not None:
            return OK
        if not os.access(self.directory, os.W_OK | os.X_OK, effective_ids=True):
            os.stat(self.directory)          # a missing directory is an error
            self.unavailable = (f"uid {os.geteuid()} may not create files "
                                f"in {self.directory}")
            return UNAVAILABLE
        for _ in range(2):
            result = self._create()
            if result != BUSY or not self._break_if_stale():
                return result
        return BUSY

    def _create(self):
        flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                 | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            fd = os.open(self.path, flags, 0o644)
        except FileExistsError:
            return BUSY
        except OSError as e:
            if e.errno in _UNAVAILABLE_ERRNOS:
                self.unavailable = f"cannot create {self.path}: {e.strerror}"
                return UNAVAILABLE
            raise
        try:
            os.write(fd, b"%d\n" % os.getpid())
            st = os.fstat(fd)
        except BaseException:
            self._unlink_if(os.fstat(fd))
            os.close(fd)
            raise
        self._fd, self._ident = fd, st
        return OK

    def _unlink_if(self, judged):
        """Remove the name only if it is still exactly the inode judged."""
        try:
            now = os.lstat(self.path)
        except FileNotFoundError:
            return True
        if not _same(now, judged):
            return False
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        return True

    def _breakable(self, st):
        return (stat.S_ISREG(st.st_mode) and st.st_nlink == 1
                and st.st_size <= _MAX_LOCK_SIZE
                and st.st_uid in (os.geteuid(), 0))

    def _old(self, mtime):
        return abs(time.time() - mtime) > self.stale_after

    def _stale_reason(self, st):
        if self._old(st.st_mtime):
            try:
                mbox_mtime = os.stat(self.mbox_path).st_mtime
            except FileNotFoundError:
                mbox_mtime = None
            if mbox_mtime is None or self._old(mbox_mtime):
                return f"unchanged for more than {self.stale_after:.0f} s"
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_NOCTTY | os.O_CLOEXEC)
        except (FileNotFoundError, PermissionError):
            return None
        try:
            if not _same(os.fstat(fd), st):
                return None
            pid = _parse_pid(os.read(fd, _MAX_LOCK_SIZE + 1))
        finally:
            os.close(fd)
        if pid is not None and _pid_is_dead(pid):
            return f"its process {pid} is gone"
        return None

    def _break_if_stale(self):
        """True if the name is free now (we removed a stale lock, or it
        vanished): try again at once."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return True
        if not self._breakable(st):
            return False
        reason = self._stale_reason(st)
        if reason is None:
            return False
        try:
            removed = self._unlink_if(st)
        except PermissionError:              # sticky directory, other owner
            return False
        if removed:
            self.broken = reason
            self._note(WARNING, "removed stale lock %s: %s",
                       self.path, reason)
        return removed

    def touch(self):
        if self._fd is not None:
            os.utime(self._fd)               # futimens: our inode, not the name

    def release(self):
        """Remove the lock if it is still ours.  True if it was removed."""
        if self._fd is None:
            return False
        fd, ident = self._fd, self._ident
        self._fd = self._ident = None
        try:
            try:
                now = os.lstat(self.path)
            except FileNotFoundError:
                self._note(WARNING, "lock %s was removed by someone "
                           "else while we held it", self.path)
                return False
            if (now.st_dev, now.st_ino) != (ident.st_dev, ident.st_ino):
                self._note(WARNING, "lock %s was replaced while we "
                           "held it; left alone", self.path)
                return False
            os.unlink(self.path)
            return True
        finally:
            os.close(fd)


# -- the lock helper ----------------------------------------------------------

# One-byte requests, fixed replies.
