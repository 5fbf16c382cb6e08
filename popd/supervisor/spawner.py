"""The spawner: forks pool slots when the supervisor asks, and nothing else.

Runs in: the spawner process (root), forked by the supervisor once its
heap is frozen and its TLS context built; and, for SpawnerLink, the
supervisor.

Why a separate process: a slot is a copy-on-write copy of whoever forks
it.  The supervisor's loop writes to hundreds of its own pages between
two forks (accepting, admitting, bookkeeping): it took ~190 page faults
per login copying them, and each write left the slots forked before it
holding the old page alone, in their private memory (a held session grew
by 360 kB while 40 other clients logged in).  The spawner's loop touches
few pages, and forks a whole batch back to back, so its image stays
shared by the slots (measured: ~56 faults per slot in the spawner, 0 in
the supervisor; the held session grew by 24 kB).

What it does: for each SPAWN (a slot id and the slot child's three
channel ends), fork; the new process runs child.run exactly as it would
have from the supervisor.  The answer SPAWNED carries the pid and a pidfd
opened before the child could have been reaped, so the supervisor follows
the right process even if that pid is recycled later.  The spawner reaps
its exited slots (and logs the ones killed by an unexpected signal); it
exits when its channel closes (supervisor stopping, reloaded, or gone),
and slots still running are re-parented to the supervisor, the
subreaper.  It never touches a client socket.
"""
import os
import select
import socket

from popd import ipc, limits
from popd.ipc import Channel, Role
from popd.slot import child, warmup
from popd.unix import logsetup, malloc, process, proctitle
from popd.unix.logsetup import log



class SpawnerError(Exception):
    """The spawner did not fork the slot (it is gone or misbehaved)."""


def run(cfg, sock):
    """Entry point in the freshly forked spawner (root)."""
    process.after_fork(keep={sock.fileno()})
    logsetup.setup(cfg.logging)
    proctitle.set_title(proctitle.SPAWNER)
    sock.setblocking(False)
    # Tables and caches a session fills at its first use, filled once here
    # in the image every slot shares (slot/warmup.py).
    warmup.warm()
    # The free blocks a slot would otherwise allocate from in pages it
    # shares with every other slot (unix/malloc.py).
    malloc.fill_free_blocks()
    while True:
        ready, _, _ = select.select([sock], [], [], limits.SPAWNER_REAP_INTERVAL)
        process.reap_children()
        if not ready:
            continue
        try:
            requests = _read_requests(sock)
        except (ipc.Closed, ipc.Violation) as e:
            if isinstance(e, ipc.Violation):
                log.error("spawner: %s; exiting", e)
            process.reap_children()
            return
        # Fork the whole batch back to back: the pages this loop writes
        # between two forks are copied once per batch, not once per slot.
        pids = []
        for slot, fds in requests:
            pid = os.fork()
            if pid == 0:
                child.run(cfg, slot, *(socket.socket(fileno=fd) for fd in fds))
            for fd in fds:
                os.close(fd)
            pids.append(pid)
        for (slot, _), pid in zip(requests, pids):
            # Opened before the next reap can run: the pid is still this child.
            pidfd = os.pidfd_open(pid)
            try:
                ipc.send(sock, "SPAWNED", slot=slot, pid=pid, fds=[pidfd])
            finally:
                os.close(pidfd)


def _read_requests(sock):
    """Every SPAWN already queued, as (slot, fds)."""
    requests = []
    while True:
        try:
            msg = ipc.recv(sock, Channel.SUPERVISOR_SPAWNER, Role.SPAWNER)
        except BlockingIOError:
            return requests
        except ipc.Closed:
            if not requests:
                raise
            return requests              # serve these; the next read ends it
        requests.append((msg.slot, msg.fds))


class SpawnerLink:
    """The supervisor's handle on its spawner."""

    def __init__(self, pid, sock):
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self.sock = sock

    @classmethod
    def start(cls, cfg):
        ours, theirs = ipc.socketpair()
        pid = process.fork_role("spawner", run, cfg, theirs)
        theirs.close()
        return cls(pid, ours)

    def spawn(self, batch):
        """Fork one slot per (slot id, ends) in `batch`, where ends are the
        child's supervisor, front-broker and child-broker channel ends
        (child.run's order); returns [(pid, pidfd)] in the same order.
        Blocks for the forks only."""
        answers = []
        try:
            for slot, ends in batch:
                ipc.send(self.sock, "SPAWN", slot=slot,
                         fds=[e.fileno() for e in ends])
            for slot, _ in batch:
                ready, _, _ = select.select([self.sock], [], [], limits.SPAWNER_ANSWER_TIMEOUT)
                if not ready:
                    raise SpawnerError("no answer")
                msg = ipc.recv(self.sock, Channel.SUPERVISOR_SPAWNER, Role.SUPERVISOR)
                answers.append((msg.pid, msg.fds[0]))
                if msg.slot != slot:
                    raise SpawnerError(f"answer for slot {msg.slot}, not {slot}")
        except (OSError, ipc.Closed, ipc.Violation, SpawnerError) as e:
            # Children already forked see their supervisor channel close
            # (the caller closes it) and exit.
            for _, pidfd in answers:
                os.close(pidfd)
            if isinstance(e, SpawnerError):
                raise
            raise SpawnerError(str(e) or type(e).__name__) from None
        return answers

    def stop(self):
        """Close the channel: the spawner reaps what it can and exits; its
        slots still running are re-parented to the supervisor, whose reap
        loop collects them and the spawner."""
        self.sock.close()
        os.close(self.pidfd)

    def wait(self):
        """At the supervisor's exit: the stopped spawner must be gone too
        (it leaves at once on end of channel; killed after limits.SPAWNER_ANSWER_TIMEOUT)."""
        self.sock.close()
        process.wait_or_kill(self.pidfd, limits.SPAWNER_ANSWER_TIMEOUT)
        os.close(self.pidfd)
