"""The supervisor's handle on one auth broker process.

Runs in: the supervisor.  Usually there is one broker; after a SIGHUP a new
one is started with the new configuration and the old one is retired: it
keeps serving the slots that were created with it (a login in progress is
not cut off) and is stopped when the last of them is gone.
"""
import enum
import os
import select
import signal

from popd import ipc, limits
from popd.ipc import Channel, Role
from popd.unix import process


class BrokerStartError(Exception):
    pass


class LinkState(enum.Enum):
    STARTING = "starting"           # until BROKER_READY
    READY = "ready"                 # it answers logins: GRANTED


class BrokerLink:
    def __init__(self, pid, pidfd, sock):
        self.pid, self.pidfd, self.sock = pid, pidfd, sock
        self.state = LinkState.STARTING
        self.counts = {}               # its last BROKER_STATS (stats.py)
        self.slots = 0                 # live slots whose channels it holds
        self.retired = False
        self.exited = False

    @classmethod
    def start(cls, cfg):
        """Fork a broker and wait for BROKER_READY (it has loaded the
        passwd file as its own user by then)."""
        ours, theirs = ipc.socketpair()
        pid = process.fork_role("auth broker", _run_broker, cfg, theirs)
        theirs.close()
        link = cls(pid, os.pidfd_open(pid), ours)
        ready, _, _ = select.select([ours], [], [], limits.BROKER_START_TIMEOUT)
        try:
            msg = ipc.recv(ours, Channel.SUPERVISOR_BROKER, Role.SUPERVISOR,
                           link.state) if ready else None
        except (ipc.Closed, ipc.Violation):
            msg = None
        if msg is None:
            link.kill()
            link.reap(block=True)
            raise BrokerStartError("the auth broker did not start (see the "
                                   "message above)")
        link.state = LinkState.READY
        return link

    def send(self, name, **fields):
        ipc.send(self.sock, name, **fields)

    def stop(self, timeout=5.0):
        """Close its channel: the broker stops its workers and exits; one
        that does not within `timeout` is killed."""
        if self.sock.fileno() >= 0:
            self.sock.close()
        if not self.exited:
            process.wait_or_kill(self.pidfd, timeout)
        self.reap(block=True)

    def kill(self):
        process.send_signal(self.pidfd, signal.SIGKILL)

    def reap(self, block=False):
        try:
            os.waitpid(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            pass


def _run_broker(cfg, sock):
    """In the new broker process, still root.  Only the broker needs
    passlib and the hashing backends (several MB of modules): importing
    them here, not at the supervisor's start, keeps them out of the
    supervisor's image, which every pool slot is forked from and pays for
    at each fork and exit."""
    from popd.broker import broker
    broker.run(cfg, sock)
