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
    either side closes.
Its log lines travel to the child as LOG frames (syslog is unreachable
from the chroot) until the handover; the pipe itself logs nothing.
"""
import os
import select
import socket
import ssl
import time

from popd import ipc, limits
from popd.ipc import Channel, Role
from popd.pop3.authorization import FrontSession
from popd.pop3.protocol import Closing
from popd.unix import logsetup, privileges, process, proctitle, seccomp, tls
from popd.unix.logsetup import log

# Each direction of the TLS pipe owns one buffer of this size, allocated
# once: big enough that a RETR moves in few system calls (the SSL layer
# cuts it into 16 KiB records itself), small beside the process.
PIPE_BUFFER = 64 * 1024


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
        msg = ipc.recv(child_sock, Channel.CHILD_FRONT, Role.FRONT)
    except (ipc.Closed, ipc.Violation):
        return                              # slot retired before any client
    if msg.name != "CLIENT":
        log.error("front: expected CLIENT, got %s", msg.name)
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
    pipe(session.tls, ours, session.reader.take_buffered(),
         cfg.limits.idle_timeout)


class _Buffer:
    """A fixed buffer holding bytes in transit: data is view[start:end]."""

    def __init__(self, size):
        self.mem = bytearray(size)
        self.view = memoryview(self.mem)
        self.start = self.end = 0

    def __len__(self):
        return self.end - self.start

    def load(self, data):
        self.view[:len(data)] = data
        self.start, self.end = 0, len(data)

    def pending(self):
        return self.view[self.start:self.end]


def pipe(client, child, first, idle_timeout):
    """Move bytes between the TLS client and the child's socketpair end
    until one side closes.  `first` is what the client had already sent
    past the login (pipelined commands); it goes to the child first.

    Both sockets are non-blocking.  Each direction reads only into its
    empty buffer (recv_into: no copies beyond the kernel's and OpenSSL's)
    and reads again only once the other side has taken all of it, so
    memory stays at two buffers whatever the peers do.  Decrypted bytes
    OpenSSL already holds (pending()) are drained before waiting on the
    socket.  When the child ends, what it wrote is delivered and then
    close_notify is sent; when the client ends, the child sees EOF.  A
    side that stops taking bytes for idle_timeout ends the pipe (the
    child applies the same bound to the client while it is alive)."""
    client.setblocking(False)
    child.setblocking(False)
    up, down = _Buffer(PIPE_BUFFER), _Buffer(PIPE_BUFFER)   # to child, to client
    up.load(first)                  # the line reader never holds 64 KiB
    client_eof = child_eof = False
    child_deaf = False              # the child stopped reading (after QUIT)
    child_shut = False              # the child was told the client is done
    try:
        while True:
            client_r = client_w = child_r = child_w = False
            progress = True
            while progress:
                progress = False
                if not up and not client_eof:
                    try:
                        n = client.recv_into(up.view)
                        if n:
                            up.start, up.end = 0, n
                        else:
                            client_eof = True
                        progress = True
                    except ssl.SSLWantReadError:
                        client_r = True
                    except ssl.SSLWantWriteError:
                        client_w = True
                    except OSError:
                        client_eof = True
                if up and child_deaf:
                    up.start = up.end       # nobody will ever read it
                if up:
                    try:
                        up.start += child.send(up.pending())
                        progress = True
                    except (BlockingIOError, InterruptedError):
                        child_w = True
                    except OSError:
                        # The child closed (QUIT); its last words may still
                        # be on their way to us: keep delivering them.
                        child_deaf = progress = True
                if not down and not child_eof:
                    try:
                        n = child.recv_into(down.view)
                        if n:
                            down.start, down.end = 0, n
                        else:
                            child_eof = True
                        progress = True
                    except (BlockingIOError, InterruptedError):
                        child_r = True
                    except OSError:
                        child_eof = progress = True
                if down:
                    try:
                        down.start += client.send(down.pending())
                        progress = True
                    except ssl.SSLWantWriteError:
                        client_w = True
                    except ssl.SSLWantReadError:
                        client_r = True
                    except OSError:
                        return "client gone"    # reset: nobody to deliver to
                # Never wait on the socket while OpenSSL holds decrypted bytes.
                if not up and not client_eof and client.pending():
                    progress = True
            if client_eof and not up and not child_shut:
                # Like a TCP half-close: the child reads EOF after the
                # commands it was sent, answers them, and ends.
                child_shut = True
                try:
                    child.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            if child_eof and not down:
                tls.close_notify(client)
                return "child closed"
            rlist = [s for s, want in ((client, client_r), (child, child_r)) if want]
            wlist = [s for s, want in ((client, client_w), (child, child_w)) if want]
            if not rlist and not wlist:
                return "nothing to wait for"    # cannot happen; never block forever
            # Waiting only for input may last: the child's idle timeout
            # bounds it.  Waiting for a peer to take bytes is bounded here.
            timeout = idle_timeout if (up or down) else None
            readable, writable, _ = select.select(rlist, wlist, [], timeout)
            if not readable and not writable:
                return "stalled"
    finally:
        child.close()
        client.close()
