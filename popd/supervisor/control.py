"""The control socket: `popd ctl` asks the running supervisor.

Runs in: the supervisor.  A Unix stream socket next to the pid file
(popd.ctl), mode 0600 root, or 0660 root:`control_group`.  The peer's
credentials (SO_PEERCRED) are checked again on every connection: uid 0,
or a member of control_group.  A request is one line of at most
limits.CONTROL_REQUEST_MAX bytes, in this vocabulary and nothing else:

    status | who | stats | metrics | kick user LOGIN | kick address IP | kick pid N

The answer is one JSON document (metrics: OpenMetrics text), or one line
"error: ..." for anything else; then the connection is closed.  Everything
is non-blocking in the supervisor's loop and bounded: at most
limits.MAX_CONTROL_CLIENTS at a time, each done within
limits.CONTROL_TIMEOUT.  The answers read the supervisor's own state
(stats.py); nothing here reads a byte a POP3 client sent.
"""
import ipaddress
import os
import selectors
import socket
import stat
import struct
import time

from popd import limits
from popd.unix.logsetup import log

SOCKET_NAME = "popd.ctl"
COMMANDS = ("status", "who", "stats", "metrics")
KICK_KINDS = ("user", "address", "pid")
_UCRED = struct.Struct("3i")
# asm-generic/socket.h; Python's socket module names it only from 3.13.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_PEERGROUPS_MAX = 1024                  # getsockopt()'s largest buffer: 256 groups


class RequestError(Exception):
    """A request outside the vocabulary; the text is the answer."""


def socket_path(cfg):
    return os.path.join(os.path.dirname(cfg.pidfile), SOCKET_NAME)


def parse_request(line):
    """b"kick user alice" -> ("kick", "user", "alice"); b"who" -> ("who",)."""
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise RequestError("not ASCII") from None
    if not text.isprintable():
        raise RequestError("control characters")
    words = text.split(" ")
    if len(words) == 1 and words[0] in COMMANDS:
        return (words[0],)
    if len(words) == 3 and words[0] == "kick" and words[1] in KICK_KINDS:
        kind, value = words[1], words[2]
        if kind == "pid":
            if not (value.isdigit() and len(value) <= 10 and int(value) > 1):
                raise RequestError("kick pid: not a process id")
            return ("kick", kind, int(value))
        if kind == "address":
            if "%" in value:
                raise RequestError("kick address: no scope ids")
            try:
                return ("kick", kind, str(ipaddress.ip_address(value)))
            except ValueError:
                raise RequestError("kick address: not an IPv4 or IPv6 address") from None
        if not 0 < len(value) <= limits.MAX_LOGIN:
            raise RequestError("kick user: not a login name")
        return ("kick", kind, value)
    raise RequestError("unknown request; one of: " + " | ".join(COMMANDS)
                       + " | kick user|address|pid VALUE")


def peer_allowed(conn, group):
    """Root, or a member of `group` (its primary group or a supplementary
    one), as the kernel recorded the caller when it connected: SO_PEERCRED
    and SO_PEERGROUPS, never /proc (a pid can be reused by then)."""
    _, uid, gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                _UCRED.size))
    if uid == 0:
        return True
    if group is None:
        return False
    if gid == group:
        return True
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _PEERGROUPS_MAX)
    except OSError:                     # more groups than the buffer holds: refused
        return False
    return group in struct.unpack(f"{len(raw) // 4}I", raw[:len(raw) // 4 * 4])


class Client:
    def __init__(self, conn, deadline):
        self.conn, self.deadline = conn, deadline
        self.inbuf = b""
        self.out = None                 # the answer, once the request is in


class ControlServer:
    def __init__(self, path, group, sel, answer):
        self.path, self.group, self.sel = path, group, sel
        self.answer = answer            # answer(request tuple) -> bytes
        self.clients = {}
        self.sock = None

    def open(self):
        """Bind the socket; a stale one (popd killed) is replaced, anything
        else at the path is left alone and reported."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise OSError(f"{self.path} exists and is not a socket; remove it")
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        if self.group is not None:
            os.chown(self.path, 0, self.group)
            os.chmod(self.path, 0o660)
        sock.listen(limits.MAX_CONTROL_CLIENTS)
        sock.setblocking(False)
        self.sock = sock
        self.sel.register(sock, selectors.EVENT_READ, (self.on_accept, None))

    def close(self):
        for client in list(self.clients.values()):
            self._done(client)
        if self.sock is not None:
            self.sel.unregister(self.sock)
            self.sock.close()
            self.sock = None
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def on_accept(self, _):
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.error("control socket: accept: %s", e.strerror)
            return
        conn.setblocking(False)
        if not peer_allowed(conn, self.group):
            log.warning("control socket: refused a caller that is neither root "
                        "nor in control_group")
            self._send_once(conn, b"error: permission denied\n")
            return
        if len(self.clients) >= limits.MAX_CONTROL_CLIENTS:
            self._send_once(conn, b"error: busy, try again\n")
            return
        client = Client(conn, time.monotonic() + limits.CONTROL_TIMEOUT)
        self.clients[conn.fileno()] = client
        self.sel.register(conn, selectors.EVENT_READ, (self.on_event, client))

    def on_event(self, client):
        try:
            if client.out is None:
                self._read(client)
            if client.out is not None:
                sent = client.conn.send(client.out)
                client.out = client.out[sent:]
                if not client.out:
                    self._done(client)
                    return
                self.sel.modify(client.conn, selectors.EVENT_WRITE, (self.on_event, client))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._done(client)

    def _read(self, client):
        data = client.conn.recv(limits.CONTROL_REQUEST_MAX + 1)
        if not data:
            raise OSError("closed")
        client.inbuf += data
        line, sep, _ = client.inbuf.partition(b"\n")
        if not sep:
            if len(client.inbuf) > limits.CONTROL_REQUEST_MAX:
                client.out = b"error: request too long\n"
            return
        try:
            request = parse_request(line.rstrip(b"\r"))
        except RequestError as e:
            client.out = f"error: {e}\n".encode()
            return
        client.out = self.answer(request)

    def expire(self, now):
        for client in [c for c in self.clients.values() if c.deadline <= now]:
            self._done(client)

    def _done(self, client):
        self.sel.unregister(client.conn)
        del self.clients[client.conn.fileno()]
        _close(client.conn)

    @staticmethod
    def _send_once(conn, data):
        try:
            conn.send(data)
        except OSError:
            pass
        _close(conn)


def _close(conn):
    """Close so that the answer arrives: unread request bytes would turn
    the close into a reset that can discard it, so the little a caller
    may have sent past its line is read and dropped first."""
    try:
        conn.shutdown(socket.SHUT_WR)
        for _ in range(4):
            if not conn.recv(4096, socket.MSG_DONTWAIT):
                break
    except OSError:
        pass
    conn.close()
