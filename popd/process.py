"""What every process does right after fork: forget what it inherited.

Runs in: the broker, each child and each front.  An inherited signal
handler or wakeup fd would let a process drive the supervisor's loop; an
inherited fd (another slot's channel, a listening socket) would let it
reach what its role must not.  So each role closes every fd that is not on
its own list and restores default signal handling.
"""
import os
import signal

from . import logsetup

# Signals the supervisor handles; children get the defaults back.
HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD,
           signal.SIGPIPE)


def reset_signals():
    signal.set_wakeup_fd(-1)
    for sig in HANDLED:
        signal.signal(sig, signal.SIG_DFL)
    # Python ignores SIGPIPE by default; keep that so a vanished client
    # gives EPIPE, an error we handle, instead of killing the process.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)


def open_fds():
    """The fds open in this process (needs /proc: call before chroot)."""
    names = os.listdir("/proc/self/fd")
    fds = set()
    for name in names:
        fd = int(name)
        try:
            os.fstat(fd)          # the listdir fd itself is gone by now
        except OSError:
            continue
        fds.add(fd)
    return fds


def close_fds_except(keep):
    """Close every fd not in `keep` (stdin/out/err are always kept: they
    are /dev/null or the launcher's terminal, never a client)."""
    keep = set(keep) | {0, 1, 2}
    for fd in open_fds() - keep:
        try:
            os.close(fd)
        except OSError:
            pass


def fork_role(name, target, *args):
    """Fork; the new process runs target(*args) and leaves with os._exit
    (never through the parent's atexit handlers or its stack).  Returns the
    pid in the parent.  target starts with after_fork(), which closes
    whatever it inherited beyond its own fds."""
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        target(*args)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:                       # noqa: B902 - last resort
        logsetup.log.exception("%s: internal error", name)
        code = 1
    os._exit(code)


def after_fork(keep):
    """The log handlers' fds (a syslog socket) are kept too, so that
    logsetup.setup() can close them properly when it replaces them."""
    reset_signals()
    close_fds_except(set(keep) | logsetup.handler_fds())
