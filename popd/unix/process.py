"""What every process does right after fork: forget what it inherited.

Runs in: the broker, each child and each front.  An inherited signal
handler or wakeup fd would let a process drive the supervisor's loop; an
inherited fd (another slot's channel, a listening socket) would let it
reach what its role must not.  So each role closes every fd that is not on
its own list and restores default signal handling.
"""
import _signal
import gc
import os
import select
import signal

from popd.unix import logsetup

# Signals the supervisor handles; children get the defaults back.
HANDLED = tuple(int(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                                 signal.SIGCHLD, signal.SIGPIPE))
# close_range(2) takes an unsigned int; Python's closerange(lo, hi) closes
# lo..hi-1.
MAX_FD = 2**31 - 1


def reset_signals():
    # _signal is what signal.signal() wraps; calling it directly skips the
    # enum conversions, which touch (and so copy) pages of the parent's
    # heap in every new process.
    _signal.set_wakeup_fd(-1)
    for sig in HANDLED:
        _signal.signal(sig, _signal.SIG_DFL)
    # Python ignores SIGPIPE by default; keep that so a vanished client
    # gives EPIPE, an error we handle, instead of killing the process.
    _signal.signal(_signal.SIGPIPE, _signal.SIG_IGN)
    # Ctrl-C on `popd -f` signals the terminal's whole process group.  It
    # means "stop" to the supervisor, which then stops everyone in order
    # (sessions get shutdown_grace); a process it forked must not die of
    # it on its own, half-way through a mailbox update.
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)


def close_fds_except(keep):
    """Close every fd not in `keep` (stdin/out/err are always kept: they
    are /dev/null or the launcher's terminal, never a client).  Each gap
    between kept fds goes in one close_range(2): no /proc walk, and no fd
    is missed, whatever its number."""
    low = 3
    for fd in sorted(set(keep) - {0, 1, 2}):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, MAX_FD)


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
    # Everything inherited is the parent's: the collector must never walk
    # it, or it writes to (and so copies) every page holding a container
    # the supervisor allocated since its own gc.freeze().  Freezing is
    # O(1): it moves the collector's lists, not the objects.
    gc.freeze()
    reset_signals()
    close_fds_except(set(keep) | logsetup.handler_fds())


def reap_children():
    """Collect every exited child (logging one killed by a signal other
    than SIGKILL, which popd sends itself); True once none is left at all.
    The supervisor's and the spawner's reap loop."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            return False
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) != signal.SIGKILL:
            logsetup.log.warning("process %d died of signal %d", pid,
                                 os.WTERMSIG(status))


def send_signal(pidfd, sig):
    """Signal through a pidfd (never hits a recycled pid); a process that
    has already exited, or none (None), is fine."""
    if pidfd is None:
        return
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        pass


def wait_or_kill(pidfd, grace):
    """Wait up to `grace` seconds for the process behind `pidfd` to exit;
    then SIGKILL it and wait as long again.  True if it left by itself.
    (The spawner, the broker and the lock helper are ended this way.)"""
    ready, _, _ = select.select([pidfd], [], [], grace)
    if ready:
        return True
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        return True
    select.select([pidfd], [], [], grace)
    return False
