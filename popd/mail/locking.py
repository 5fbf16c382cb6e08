"""Mailbox locks that the MDAs respect: fcntl, the dot-lock, the lock helper.

Runs in: the session child, before and after it becomes the mailbox owner,
and in the lock helper it forks (see start_lock_helper).

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

- ``start_lock_helper``: the dot-lock for a spool that only group ``mail``
  may write into (``mail.dotlock_group``).  See its docstring.

Order: procmail, postfix and liblockfile take the dot-lock first and then
the fcntl lock, and block on the fcntl lock while holding the dot-lock.

Every import is at the top: after the privilege drop imports may fail.
"""
import errno
import fcntl
import gc
import os
import resource
import select
import signal
import socket
import stat
import time

from popd.unix import logsetup, privileges, proctitle
from popd.unix.logsetup import WARNING, log

# Results of one attempt at the dot-lock.
OK = "ok"
BUSY = "busy"
UNAVAILABLE = "unavailable"

_UNAVAILABLE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)
_FCNTL_BUSY_ERRNOS = (errno.EACCES, errno.EAGAIN)
_MAX_LOCK_SIZE = 64
_PID_MAX = 1 << 22                   # kernel.pid_max cannot exceed this

_POLL_FIRST = 0.01
_POLL_MAX = 0.25


class LockBusy(Exception):
    """Another process holds the lock after the bounded wait: [IN-USE]."""


class LockHelperError(OSError):
    """The lock helper died, hung or answered nonsense."""


# -- fcntl ----------------------------------------------------------------------

def _pause(deadline, delay, what):
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
    delay = _POLL_FIRST
    while True:
        try:
            fcntl.lockf(fd, op)
            return
        except OSError as e:
            if e.errno not in _FCNTL_BUSY_ERRNOS:
                raise
        delay = _pause(deadline, delay,
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

    def __init__(self, mbox_path, stale_after=120.0):
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
        delay = _POLL_FIRST
        while True:
            result = self.try_once()
            if result == OK:
                return True
            if result == UNAVAILABLE:
                return False
            delay = _pause(deadline, delay,
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
_REQ_LOCK = b"L"
_REQ_UNLOCK = b"U"
_REP_OK = b"O"
_REP_OK_BROKE = b"S"                     # OK, after removing a stale lock
_REP_BUSY = b"B"
_REP_UNAVAILABLE = b"N"
_REP_ERROR = b"E"                        # followed by the errno in decimal
_REP_READY = b"R"                        # once, after the drop was proved
_HELPER_IO_TIMEOUT = 5.0
_HELPER_EXIT_WAIT = 2.0

def _spool_problem(directory, uid, gid_mail):
    """Why the helper must not serve this directory, or None.  Every
    directory and symlink on the way, before and after resolving links,
    must be root's and not writable by the owner (so the owner cannot
    redirect the helper's group into another directory), and the last
    one must be writable through group gid_mail (else the helper is of no
    use)."""
    real = os.path.realpath(directory)
    for path in (os.path.abspath(directory), real):
        prefix = "/"
        for part in [""] + [p for p in path.split("/") if p]:
            prefix = os.path.join(prefix, part)
            try:
                st = os.lstat(prefix)
            except OSError as e:
                return f"{prefix}: {e.strerror}"
            if st.st_uid != 0:
                return f"{prefix} is owned by uid {st.st_uid}, not root"
            if stat.S_ISLNK(st.st_mode):
                continue
            mode = st.st_mode
            if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
                return f"{prefix} is world-writable"
            if mode & stat.S_IWGRP and st.st_gid not in (0, gid_mail):
                return f"{prefix} is writable by group {st.st_gid}"
    st = os.stat(real)
    if not (st.st_gid == gid_mail and st.st_mode & stat.S_IWGRP):
        return f"{real} is not writable by group {gid_mail}"
    return None


class LockHelperClient:
    """The session child's side of the lock helper; same semantics as
    DotLock: acquire(timeout) -> True / False (``unavailable``) / LockBusy,
    release(), touch() (a no-op: the helper refreshes its own lock while it
    holds it), close() (the helper removes its lock if held and exits)."""

    def __init__(self, path, sock=None, pid=None, pidfd=None, unavailable=None):
        self.path = path
        self.pid = pid
        self.unavailable = unavailable
        self.broken = None
        self._sock = sock
        self._pidfd = pidfd
        self._held = False

    @property
    def held(self):
        return self._held

    def _ask(self, request):
        if self._sock is None:
            raise LockHelperError(errno.EPIPE, "lock helper is closed")
        try:
            self._sock.settimeout(_HELPER_IO_TIMEOUT)
            self._sock.send(request)
            reply = self._sock.recv(16)
        except OSError as e:
            raise LockHelperError(e.errno or errno.EIO,
                                  f"lock helper for {self.path}: {e}") from None
        if not reply:
            raise LockHelperError(errno.EPIPE,
                                  f"lock helper for {self.path} is gone")
        return reply

    def acquire(self, timeout):
        if self._held:
            return True
        if self._sock is None and self.unavailable:
            return False
        deadline = time.monotonic() + max(0.0, timeout)
        delay = _POLL_FIRST
        while True:
            reply = self._ask(_REQ_LOCK)
            if reply in (_REP_OK, _REP_OK_BROKE):
                if reply == _REP_OK_BROKE:
                    self.broken = "stale"
                    log.warning("lock helper removed a stale lock %s", self.path)
                self._held = True
                return True
            if reply == _REP_UNAVAILABLE:
                self.unavailable = (f"the lock helper may not create "
                                    f"{self.path}")
                return False
            if reply[:1] == _REP_ERROR and reply[1:].isdigit():
                err = int(reply[1:])
                raise OSError(err, os.strerror(err), self.path)
            if reply != _REP_BUSY:
                raise LockHelperError(errno.EPROTO,
                                      f"lock helper answered {reply!r}")
            delay = _pause(deadline, delay,
                           f"{self.path} still held after {timeout:.1f} s")

    def touch(self):
        pass

    def release(self):
        if not self._held:
            return False
        self._held = False
        reply = self._ask(_REQ_UNLOCK)
        if reply[:1] == _REP_ERROR and reply[1:].isdigit():
            err = int(reply[1:])
            raise OSError(err, os.strerror(err), self.path)
        if reply != _REP_OK:
            raise LockHelperError(errno.EPROTO, f"lock helper answered {reply!r}")
        return True

    def close(self):
        """End the helper (it removes its lock if it holds one) and reap it."""
        self._held = False
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._pidfd is None:
            return
        try:
            ready, _, _ = select.select([self._pidfd], [], [], _HELPER_EXIT_WAIT)
            if not ready:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
                select.select([self._pidfd], [], [], _HELPER_EXIT_WAIT)
            try:
                os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:        # SIGCHLD ignored: already reaped
                pass
        finally:
            os.close(self._pidfd)
            self._pidfd = None


def start_lock_helper(mbox_path, uid, gid_mail, stale_after=120.0):
    """Fork the dot-lock helper for `mbox_path` and return its client.

    Called by the session child while it can still change ids (CAP_SETUID
    and CAP_SETGID permitted, as privileges.drop_to(keep=SETID_CAPS) leaves
    them), just before it becomes the owner; root works too.  The helper:

    - closes every descriptor but its end of a SOCK_SEQPACKET socketpair
      (0, 1 and 2 become /dev/null, so nothing it might print lands in a
      file), resets signal handlers and the wakeup fd it inherited, and
      stops Python's cyclic GC and logging (an inherited object must never
      close or write to a descriptor number it has since reused);
    - becomes uid=owner, gid=gid_mail (real, effective and saved), no
      supplementary groups, no capabilities in any set, ambient cleared,
      NO_NEW_PRIVS, no core files, not dumpable; and proves it;
    - serves two one-byte requests: ``L`` (one attempt at ``<mbox>.lock``,
      with DotLock's logic, stale locks included: OK / BUSY / UNAVAILABLE /
      an errno) and ``U`` (remove it if ours); the client does the bounded
      wait.  The path is fixed here, at fork time: nothing the client sends
      names a file.  Anything else (another byte, more than one byte,
      ancillary data such as passed descriptors) ends it, and so does EOF;
      it removes its lock if it holds one before it exits.  While it holds
      the lock it refreshes the lock's mtime itself.

    It answers ``R`` once its drop is proved; until then this function
    waits (bounded), and raises LockHelperError if the helper died instead.

    The session child never holds gid_mail: after the fork it becomes the
    owner with its own group only.  Group mail on Debian can read every
    mailbox in /var/mail and create or unlink any file there (no sticky
    bit), so the helper is the one process that matters:

    Residual risk.  The helper runs as the owner's uid, so every process of
    the owner (the session child included) may signal it: stop it (which
    blocks deliveries to the owner's own mailbox, as holding an fcntl lock
    on it already could) or kill it (its lock then goes stale: a dead pid).
    What they cannot do is get at its group: ptrace, /proc/<pid>/mem,
    process_vm_readv/writev and pidfd_getfd all need ptrace access
    (__ptrace_may_access), which for a process that is not dumpable
    (PR_SET_DUMPABLE 0, set after the last credential change, since a
    change of ids resets it) requires CAP_SYS_PTRACE, which the owner does
    not have; the same check makes its /proc files (fd/, environ, maps)
    root's and unreadable to them.  It cannot exec (NO_NEW_PRIVS and no
    code path that does), and its one input is the byte protocol above.
    A helper that broke a stale lock could remove a lock-sized file
    (regular, one link, <= 64 bytes, owned by root or the owner) named
    ``<mbox>.lock`` in the spool, nothing else.  Before forking, the
    directory chain of the mailbox is checked (root's all the way, not
    writable by the owner, before and after resolving symlinks), so the
    owner cannot point the helper's group at another directory; if the
    check fails no helper is started and acquire() returns False (the
    reason is in ``unavailable``).
    """
    mbox_path = os.fspath(mbox_path)
    lock_path = mbox_path + ".lock"
    if uid == 0 or gid_mail == 0:
        raise ValueError(f"refusing a lock helper with uid {uid} gid {gid_mail}")
    problem = _spool_problem(os.path.dirname(os.path.abspath(mbox_path)),
                             uid, gid_mail)
    if problem:
        return LockHelperClient(lock_path,
                                unavailable=f"no lock helper: {problem}")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:                                          # the helper
        code = 70
        try:
            ours.close()
            code = _helper_main(theirs, mbox_path, uid, gid_mail, stale_after)
        except BaseException:                             # noqa: B902
            code = 71
        finally:
            os._exit(code)
    theirs.close()
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        ours.close()
        raise
    client = LockHelperClient(lock_path, sock=ours, pid=pid, pidfd=pidfd)
    try:
        ours.settimeout(_HELPER_IO_TIMEOUT)
        ready = ours.recv(16)
    except OSError:
        ready = b""
    if ready != _REP_READY:
        client.close()
        raise LockHelperError(errno.EPERM, f"lock helper for {lock_path} did "
                              f"not start (credential drop failed?)")
    return client


def _close_all_but(keep):
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        names = None
    if names is None:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        os.closerange(0, keep)
        os.closerange(keep + 1, limit if limit > 0 else 65536)
    else:
        for name in names:
            fd = int(name)
            if fd != keep:
                try:
                    os.close(fd)
                except OSError:
                    pass
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        if fd != null:
            os.dup2(null, fd, inheritable=False)
    if null > 2:
        os.close(null)


def _become(uid, gid):
    """The helper's drop, through the same primitives as every popd role:
    uid = the owner, gid = the dot-lock group, no capabilities, hardened,
    proved by privileges.check() and by failing to get uid 0 back."""
    if os.geteuid() == 0:
        privileges.drop_bounding(0)
    else:
        privileges.capset(privileges.SETID_CAPS, privileges.SETID_CAPS)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    privileges.capset(0, 0)
    privileges.harden()
    privileges.check(uid, gid, permitted=0, bounding=privileges.bounding_set())
    wrong = []
    try:
        os.setresuid(0, 0, 0)
        wrong.append("uid 0 regained")
    except PermissionError:
        pass
    if wrong:
        raise privileges.PrivilegeError("lock helper: " + ", ".join(wrong))


def _helper_main(sock, mbox_path, uid, gid_mail, stale_after):
    gc.disable()
    logsetup.setup_silent()
    proctitle.set_title(proctitle.LOCK_HELPER)
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:                   # not the main thread: none was set
        pass
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, signal.SIG_IGN if sig == signal.SIGPIPE
                          else signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    keep = sock.fileno()
    if keep <= 2:
        moved = fcntl.fcntl(keep, fcntl.F_DUPFD_CLOEXEC, 3)
        sock.detach()
        os.close(keep)
        sock = socket.socket(fileno=moved)
        keep = moved
    _close_all_but(keep)
    _become(uid, gid_mail)
    sock.send(_REP_READY)

    lock = DotLock(mbox_path, stale_after)
    lock.quiet = True
    refresh = max(1.0, min(lock.stale_after / 4, 30.0))
    poller = select.poll()
    poller.register(keep, select.POLLIN)
    touched = time.monotonic()
    code = 0
    try:
        while True:
            events = poller.poll(refresh * 1000 if lock.held else None)
            if lock.held and time.monotonic() - touched >= refresh:
                lock.touch()
                touched = time.monotonic()
            if not events:
                continue
            try:
                data, ancillary, flags, _ = sock.recvmsg(8)
            except OSError:
                break
            if not data:                                  # EOF
                break
            if (ancillary or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC)
                    or data not in (_REQ_LOCK, _REQ_UNLOCK)):
                code = 2
                break
            if data == _REQ_LOCK:
                try:
                    result = lock.try_once()
                    reply = {OK: _REP_OK_BROKE if lock.broken else _REP_OK,
                             BUSY: _REP_BUSY,
                             UNAVAILABLE: _REP_UNAVAILABLE}[result]
                except OSError as e:
                    reply = _REP_ERROR + b"%d" % (e.errno or errno.EIO)
                touched = time.monotonic()
            else:
                try:
                    lock.release()
                    reply = _REP_OK
                except OSError as e:
                    reply = _REP_ERROR + b"%d" % (e.errno or errno.EIO)
            try:
                sock.send(reply)
            except OSError:
                break
    finally:
        lock.release()
    return code
