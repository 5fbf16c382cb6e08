"""The front: a slot's network side, chrooted and without capabilities.

Runs in: the front process, forked by its child while both are still root.

It sandboxes itself before it ever sees a client byte: chroot to an empty
root-owned directory, then login_user with no capability in any set.  It
greets, runs the AUTHORIZATION dialogue (authorization.py), asks the
broker, and after a login on a cleartext listener hands the client socket
and any bytes it had already read to the child, then exits.  Its log lines
travel to the child as LOG frames (syslog is unreachable from the chroot).
"""
import logging
import os
import socket

from . import ipc, logsetup, privileges, process, proctitle
from .authorization import FrontSession
from .ipc import Channel, Role
from .logsetup import log


class ChannelLogHandler(logging.Handler):
    """Forward log records to the child; drop them if it is not reading."""

    def __init__(self, sock):
        super().__init__()
        self.sock = sock

    def emit(self, record):
        try:
            text = logsetup.sanitize(record.getMessage(), limit=900)
            ipc.send(self.sock, "LOG", level=record.levelno, text=text)
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

    try:
        msg = ipc.recv(child_sock, Channel.CHILD_FRONT, Role.FRONT)
    except (ipc.Closed, ipc.Violation):
        return                              # slot retired before any client
    if msg.name != "CLIENT":
        log.error("front: expected CLIENT, got %s", msg.name)
        return
    client = socket.socket(fileno=msg.fds[0])
    if cfg.logging.verbose_proctitle:
        proctitle.set_title(proctitle.FRONT, peer=msg.peer_ip)
    session = FrontSession(client, cfg, broker_sock, child_sock)
    session.greet()
    outcome = session.serve()
    if session.logged_in:
        # Cleartext: the child takes over the socket and what we had read
        # past PASS (pipelined commands), and we are done.
        ipc.send(child_sock, "HANDOVER", fds=[client.fileno()],
                 leftover=session.reader.take_buffered())
        client.close()
        return
    log.info("connection closed before login: rip=%s, reason=%s",
             msg.peer_ip, outcome)
    session.close()
