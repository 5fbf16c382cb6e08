"""Detaching, the pid file, and telling whoever started popd how start-up went.

Runs in: the launcher (launch(): fork, then wait for one word from the
daemon), the daemon-to-be between that fork and the supervisor (python-
daemon's DaemonContext, used to detach and nothing else), and the
supervisor (Pidfile, the reports, sd_notify).

python-daemon is used for detaching only, because the rest does not fit
popd: its uid/gid keep root's supplementary groups (popd drops privileges
per process, in unix/privileges.py), its default umask is 0 (popd sets its own), its pid file
has no stale-pid detection, its default SIGTERM handler raises inside the
handler (the supervisor installs its own), and a failure after its fork is
invisible: the launcher has already exited 0.  So the launcher keeps a pipe
to the daemon and exits only when the supervisor has logged "ready" (0) or
the daemon has said why it could not start (1, the reason on stderr), and
popd writes its own pid file, locked for the supervisor's lifetime.
"""
import errno
import fcntl
import os
import socket
import stat
import sys
import traceback

import daemon

from popd.supervisor import trusted_files
from popd.unix.logsetup import log

# At least this strict whatever the operator's umask: nothing popd creates
# without an explicit mode is writable, or readable, by others.
UMASK = 0o027
# The daemon's report on the status pipe: "ok" or "popd: ..." lines, then NUL.
READY_WORD = b"ok"
REPORT_END = b"\0"
MAX_REPORT = 8192
EXITED_SILENTLY = "popd: the daemon exited during start-up (see the log)"


def tighten_umask():
    """umask = inherited | UMASK: never looser than what the operator or
    systemd's UMask= chose.  Returns the new mask."""
    mask = os.umask(UMASK) | UMASK
    os.umask(mask)
    return mask


# -- the pid file -----------------------------------------------------------

class PidfileError(Exception):
    """One line for the operator."""


class Pidfile:
    """The supervisor's pid file, with a lockf lock held as long as the
    supervisor runs.  Whether a popd is running is decided by the lock,
    never by the number in the file: after a SIGKILL the file stays but the
    lock is gone with the process.  lockf locks belong to a process and are
    not inherited, so forked children neither hold nor can release it (and
    process.after_fork closes their copy of the fd)."""

    def __init__(self, path, fd):
        self.path, self.fd, self.owner = path, fd, os.getpid()

    @classmethod
    def acquire(cls, path):
        # Root writes this file: its directory must be one only root can
        # write, or someone could put a link to another file there.
        problem = trusted_files.root_directory(os.path.dirname(path), 0o755)
        if problem:
            raise PidfileError(f"pidfile: {problem}")
        # A popd that stops unlinks the file and then drops the lock; one
        # that opened the old file in between gets a lock on an unlinked
        # file, so the lock only counts if the path still names our file.
        for _ in range(5):
            fd = _open_pidfile(path)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                pid = _read_pid(fd)
                os.close(fd)
                if e.errno not in (errno.EACCES, errno.EAGAIN):
                    raise PidfileError(f"{path}: cannot lock: {e.strerror}") from None
                raise PidfileError(f"already running (pid {pid or '?'}, {path})") from None
            if _same_file(fd, path):
                # Ours; a stale number from a killed popd is overwritten.
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                return cls(path, fd)
            os.close(fd)
        raise PidfileError(f"{path} keeps being replaced; is another popd starting?")

    def remove(self):
        """At a clean stop (or a failed start) in the supervisor only."""
        if self.fd is None or os.getpid() != self.owner:
            return
        if _same_file(self.fd, self.path):
            os.unlink(self.path)
        os.close(self.fd)           # drops the lock
        self.fd = None


def _open_pidfile(path):
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags | os.O_NONBLOCK, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise PidfileError(f"{path} is a symbolic link; remove it") from None
        raise PidfileError(f"{path}: cannot open: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_nlink != 1:
        os.close(fd)
        raise PidfileError(f"{path} is not a regular file owned by root with one "
                           f"link; remove it")
    os.fchmod(fd, 0o644)            # the umask may have taken read from others
    return fd


def _read_pid(fd):
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _same_file(fd, path):
    try:
        now = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    st = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


# -- reports: the launcher's pipe, or systemd ---------------------------------

class ForegroundReport:
    """With -f: problems on stderr; readiness to systemd (Type=notify) when
    it asked for it through NOTIFY_SOCKET."""

    def ready(self):
        sd_notify("READY=1\nSTATUS=serving")

    def stopping(self):
        sd_notify("STOPPING=1")

    def failed(self, lines):
        for line in lines:
            print(f"popd: {line}", file=sys.stderr)


class PipeReport:
    """The daemon's end of the status pipe: one report, then closed, so a
    child forked later never holds it (process.after_fork would close it
    anyway)."""

    def __init__(self, fd):
        self.fd = fd

    def ready(self):
        self._send(READY_WORD)

    def stopping(self):
        pass

    def failed(self, lines):
        self._send("".join(f"popd: {line}\n" for line in lines).encode(
            "utf-8", "replace")[:MAX_REPORT])

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _send(self, data):
        if self.fd is None:
            return
        try:
            os.write(self.fd, data + REPORT_END)    # < PIPE_BUF: one write
        except OSError:
            pass                    # the launcher is gone: nobody to tell
        self.close()


def sd_notify(state):
    """Send `state` to systemd's notify socket, if there is one.  No
    dependency: a datagram to $NOTIFY_SOCKET (a leading '@' is an abstract
    socket).  A failure only means systemd times the start out."""
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if not addr.startswith(("/", "@")):
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError:
        return False
    return True


# -- detaching ---------------------------------------------------------------

def launch(keep_stderr, body):
    """Runs in the launcher.  Fork; the child detaches and runs
    body(report) as the daemon.  Returns the launcher's exit code: 0 once
    the daemon reported ready, else 1 with its reason on stderr."""
    ensure_std_fds()
    r, w = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        become_daemon(w, keep_stderr, body)         # never returns
    os.close(w)
    try:
        report = read_report(r)
    except KeyboardInterrupt:
        print("popd: interrupted; the daemon may still be starting", file=sys.stderr)
        return 1
    finally:
        os.close(r)
    # The first fork's process exits as soon as it has forked again
    # (python-daemon), or when it could not detach at all.
    os.waitpid(pid, 0)
    if report == READY_WORD:
        return 0
    text = report.decode("utf-8", "replace").strip("\n")
    print(text or EXITED_SILENTLY, file=sys.stderr)
    return 1


def read_report(fd):
    """Up to the end mark, or EOF: a daemon that died says nothing."""
    data = b""
    while REPORT_END not in data and len(data) <= MAX_REPORT:
        chunk = os.read(fd, 4096)
        if not chunk:
            return data
        data += chunk
    return data.split(REPORT_END, 1)[0]


def become_daemon(w, keep_stderr, body):
    """Runs in the launcher's child: detach (python-daemon forks twice and
    the intermediate processes exit), then run body(report) as the daemon.
    Ends with os._exit: whatever atexit handlers the launcher registered
    (python-daemon's close() included) are not ours to run."""
    report = PipeReport(w)
    code = 1
    try:
        # python-daemon redirects through sys.std*.fileno(): make sure they
        # are the process's fds 0-2, whatever the launcher bound there.
        sys.stdin = open(0, "r", closefd=False)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, errors="backslashreplace",
                          closefd=False)
        with open(os.devnull, "r+b") as null:
            context = daemon.DaemonContext(
                detach_process=True, umask=tighten_umask(), working_directory="/",
                prevent_core=True, signal_map={}, pidfile=None,
                files_preserve=[w], stdin=null, stdout=null,
                # logging.target: stderr keeps the launcher's stderr; with
                # syslog nothing is written there, so it is let go.
                stderr=sys.stderr if keep_stderr else null)
            context.open()
        code = body(report)
    except BaseException as e:                          # noqa: B902 - last resort
        reason = f"internal error during start-up: {type(e).__name__}: {e}"
        try:
            log.exception("internal error")
        except BaseException:                           # noqa: B902
            pass
        if report.fd is not None:
            report.failed([reason])
        else:
            traceback.print_exc()
    finally:
        report.close()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def ensure_std_fds():
    """fds 0-2 open (on /dev/null if need be) before anything else takes
    them: a status pipe on fd 2 would get log lines."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)      # takes the lowest free fd: this one
    for name, fd, mode in (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w")):
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False))
