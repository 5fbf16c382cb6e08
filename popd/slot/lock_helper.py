"""The lock helper: the one process that holds mail.dotlock_group.

Runs in: its own process, forked by the session child per session (before
the child becomes the mailbox owner) when mail.dotlock_group is set; it
runs as the owner's uid with that group and no capabilities, and creates
and removes <mbox>.lock, nothing else.  Its two requests and their answers
are single bytes declared in ipc.py ("the lock helper's channel").  See
start_lock_helper for what it can and cannot do.

Every import is at the top: after the privilege drop imports may fail.
"""
import errno
import fcntl
import gc
import os
import select
import signal
import socket
import stat
import time

from popd import ipc, limits
from popd.mail.locking import (BUSY, OK, POLL_FIRST, UNAVAILABLE, DotLock, LockHelperError,
                               pause)
from popd.unix import logsetup, privileges, process, proctitle
from popd.unix.logsetup import log


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
    release(), close() (the helper removes its lock if held and exits).
    The helper refreshes its own lock while it holds it."""

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
            self._sock.settimeout(limits.LOCK_HELPER_IO_TIMEOUT)
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
        delay = POLL_FIRST
        while True:
            reply = self._ask(ipc.HELPER_LOCK)
            if reply in (ipc.HELPER_OK, ipc.HELPER_OK_BROKE):
                if reply == ipc.HELPER_OK_BROKE:
                    self.broken = "stale"
                    log.warning("lock helper removed a stale lock %s", self.path)
                self._held = True
                return True
            if reply == ipc.HELPER_UNAVAILABLE:
                self.unavailable = (f"the lock helper may not create "
                                    f"{self.path}")
                return False
            if reply[:1] == ipc.HELPER_ERROR and reply[1:].isdigit():
                err = int(reply[1:])
                raise OSError(err, os.strerror(err), self.path)
            if reply != ipc.HELPER_BUSY:
                raise LockHelperError(errno.EPROTO,
                                      f"lock helper answered {reply!r}")
            delay = pause(deadline, delay,
                          f"{self.path} still held after {timeout:.1f} s")

    def release(self):
        if not self._held:
            return False
        self._held = False
        reply = self._ask(ipc.HELPER_UNLOCK)
        if reply[:1] == ipc.HELPER_ERROR and reply[1:].isdigit():
            err = int(reply[1:])
            raise OSError(err, os.strerror(err), self.path)
        if reply != ipc.HELPER_OK:
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
            process.wait_or_kill(self._pidfd, limits.LOCK_HELPER_EXIT_WAIT)
            try:
                os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:        # SIGCHLD ignored: already reaped
                pass
        finally:
            os.close(self._pidfd)
            self._pidfd = None


def start_lock_helper(mbox_path, uid, gid_mail, stale_after=limits.DOTLOCK_STALE_AFTER):
    """Fork the dot-lock helper for `mbox_path` and return its client.

    Called by the session child while it can still change ids (CAP_SETUID
    and CAP_SETGID permitted, as privileges.drop_to(keep=SETID_CAPS) leaves
    them), just before it becomes the owner; root works too.  The helper:

    - does what every forked popd process does first (process.after_fork:
      every descriptor closed but its end of a SOCK_SEQPACKET socketpair,
      inherited signal handlers and wakeup fd reset), and also stops
      Python's cyclic GC and logging (an inherited object must never close
      or write to a descriptor number it has since reused) and points 0, 1
      and 2 at /dev/null, so nothing it might print lands in a file;
    - becomes uid=owner, gid=gid_mail (real, effective and saved), no
      supplementary groups, no capabilities in any set, ambient cleared,
      NO_NEW_PRIVS, no core files, not dumpable, and proves it
      (privileges.switch_to, the child's own switch at the grant);
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
        ours.settimeout(limits.LOCK_HELPER_IO_TIMEOUT)
        ready = ours.recv(16)
    except OSError:
        ready = b""
    if ready != ipc.HELPER_READY:
        client.close()
        raise LockHelperError(errno.EPERM, f"lock helper for {lock_path} did "
                              f"not start (credential drop failed?)")
    return client


def _devnull_stdio():
    """0, 1 and 2 become /dev/null: nothing the helper might print lands
    in the log file or the terminal popd was started from."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        if fd != null:
            os.dup2(null, fd, inheritable=False)
    if null > 2:
        os.close(null)


def _helper_main(sock, mbox_path, uid, gid_mail, stale_after):
    keep = sock.fileno()
    if keep <= 2:
        moved = fcntl.fcntl(keep, fcntl.F_DUPFD_CLOEXEC, 3)
        sock.detach()
        os.close(keep)
        sock = socket.socket(fileno=moved)
        keep = moved
    process.after_fork(keep={keep})
    gc.disable()
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    logsetup.setup_silent()
    _devnull_stdio()
    proctitle.set_title(proctitle.LOCK_HELPER)
    # uid = the owner, gid = the dot-lock group, nothing else; proved.
    if os.geteuid() == 0:
        privileges.drop_bounding(0)
    privileges.switch_to(uid, gid_mail, bounding=privileges.bounding_set())
    sock.send(ipc.HELPER_READY)

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
                    or data not in (ipc.HELPER_LOCK, ipc.HELPER_UNLOCK)):
                code = 2
                break
            if data == ipc.HELPER_LOCK:
                try:
                    result = lock.try_once()
                    reply = {OK: ipc.HELPER_OK_BROKE if lock.broken else ipc.HELPER_OK,
                             BUSY: ipc.HELPER_BUSY,
                             UNAVAILABLE: ipc.HELPER_UNAVAILABLE}[result]
                except OSError as e:
                    reply = ipc.HELPER_ERROR + b"%d" % (e.errno or errno.EIO)
                touched = time.monotonic()
            else:
                try:
                    lock.release()
                    reply = ipc.HELPER_OK
                except OSError as e:
                    reply = ipc.HELPER_ERROR + b"%d" % (e.errno or errno.EIO)
            try:
                sock.send(reply)
            except OSError:
                break
    finally:
        lock.release()
    return code
