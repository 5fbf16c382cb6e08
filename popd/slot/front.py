"""The front: a slot's network side, chrooted and without capabilities.

Runs in: the front process, forked by its child while both are still root.

It sandboxes itself before it ever sees a client byte: chroot to an empty
root-owned directory, then login_user with no capability in any set.  It
does the TLS handshake (implicit TLS, or after STLS) with the context the
supervisor built before forking, greets, runs the AUTHORIZATION dialogue
(authorization.py) and asks the broker.  After a login:
  - cleartext: it hands the client socket and any bytes it had already
    read to the child, then exits;
  - TLS: the child cannot take over a TLS session, so the front stays as
    a plaintext pipe.  It hands the child one end of a fresh socketpair
    (same HANDOVER message: the child does not care what kind of stream
    it serves) and pumps bytes between that and the TLS socket until
    either side closes (tls_pipe.py).
Its log lines travel to the child as LOG frames (syslog is unreachable
from the chroot) until the handover; the pipe itself logs nothing.
"""
import os
import select
import socket
import time

from popd import ipc, limits
from popd.ipc import Channel, Role
from popd.pop3.authorization import FrontSession, FrontState
from popd.pop3.protocol import Closing
from popd.slot import tls_pipe
from popd.unix import logsetup, privileges, process, proctitle, seccomp, tls
from popd.unix.logsetup import log

class ChannelLogHandler(logsetup.Handler):
    """Forward log lines to the child; drop them if it is not reading."""

    def __init__(self, sock):
        self.sock = sock

    def emit(self, level, text):
        try:
            ipc.send(self.sock, "LOG", level=level,
                     text=logsetup.sanitize(text, limit=900))
        except (OSError, ValueError):
            pass


def _stdio_to_devnull():
    """Nothing a front writes may reach the launcher's terminal or a log."""
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def run(cfg, child_sock, broker_sock):
    process.after_fork(keep={child_sock.fileno(), broker_sock.fileno()})
    _stdio_to_devnull()
    proctitle.set_title(proctitle.FRONT)
    logsetup.setup(cfg.logging, handler=ChannelLogHandler(child_sock))
    privileges.sandbox_front(cfg.login_chroot, cfg.login_user, cfg.login_group)
    privileges.limit_resources(limits.FRONT_FILES, cfg.limits.session_memory)
    # From here on only the system calls a front needs (popd/unix/seccomp.py):
    # no signals to other fronts, no sockets, no exec, no files.
    seccomp.confine_front(cfg.login_seccomp)

    # Idle: wait for a client from the child.  The broker never speaks
    # first, so anything readable there means its channel is gone, and a
    # front that cannot ask the broker must not take a client.
    ready, _, _ = select.select([child_sock, broker_sock], [], [])
    if broker_sock in ready:
        return
    try:
        msg = ipc.recv(child_sock, Channel.CHILD_FRONT, Role.FRONT, FrontState.IDLE)
    except ipc.Closed:
        return                              # slot retired before any client
    except ipc.Violation as e:
        log.error("front: %s", e)
        return
    # The login deadline starts now, before any TLS handshake: a client
    # that stalls inside the handshake is dropped by the same clock.
    deadline = time.monotonic() + cfg.limits.login_deadline
    client = socket.socket(fileno=msg.fds[0])
    if cfg.logging.verbose_proctitle:
        proctitle.set_title(proctitle.FRONT, peer=msg.peer_ip)
    session = FrontSession(client, cfg, broker_sock, child_sock,
                           tls_mode=msg.tls, peer_ip=msg.peer_ip,
                           deadline=deadline)
    outcome = None
    if msg.tls == "implicit":
        try:
            session.start_tls()
        except Closing as e:
            outcome = str(e)
    if outcome is None:
        session.greet()
        outcome = session.serve()
    if not session.logged_in:
        log.info("connection closed before login: rip=%s, reason=%s",
                 msg.peer_ip, outcome)
        session.close()
        return
    if session.tls is None:
        # Cleartext: the child takes over the socket and what we had read
        # past PASS (pipelined commands), and we are done.
        ipc.send(child_sock, "HANDOVER", fds=[session.sock.fileno()],
                 leftover=session.reader.take_buffered(), tls="none")
        session.sock.close()
        return
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ipc.send(child_sock, "HANDOVER", fds=[theirs.fileno()], leftover=b"",
             tls=tls.describe(session.tls)[:120])
    theirs.close()
    # From here on the front needs neither channel: the broker has granted,
    # the child has the stream.  Log lines would have nowhere to go.
    logsetup.setup(cfg.logging, handler=logsetup.NullHandler())
    child_sock.close()
    broker_sock.close()
    tls_pipe.pipe(session.tls, ours, session.reader.take_buffered(),
                  cfg.limits.idle_timeout)
