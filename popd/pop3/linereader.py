"""The one place client bytes enter popd.

Runs in: the front (before login) and the child (after login).

A LineReader hands out one command line at a time.  It never holds more
than one receive buffer plus one line: an overlong line is answered once
(the caller sees OVERLONG) and the rest of it is read and thrown away up to
its LF without being stored.  Every read is bounded by an absolute
deadline (the total login deadline before login, the idle timeout after),
so a client trickling a byte at a time cannot hold a process past it.
"""
import select
import time

from popd import limits

RECV_SIZE = 4096
OVERLONG = object()          # sentinel: the line was too long and was drained


class Timeout(Exception):
    """The deadline passed before a full line arrived."""


class Disconnected(Exception):
    """The client closed the connection or the socket failed."""


class TooLong(Disconnected):
    """An overlong line went on past MAX_DRAIN: the connection is ended."""


MAX_DRAIN = limits.MAX_DRAIN     # re-exported for the tests' model


def wait_readable(sock, deadline):
    """Block until sock has data or the deadline passes (TLS sockets may
    already hold decrypted bytes: pending() is checked first)."""
    pending = getattr(sock, "pending", None)
    if pending is not None and pending():
        return
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise Timeout()
    ready, _, _ = select.select([sock], [], [], remaining)
    if not ready:
        raise Timeout()


class LineReader:
    def __init__(self, sock, max_line, initial=b""):
        self.sock = sock
        self.max_line = max_line
        self.buf = bytearray(initial)
        self.draining = False
        # None, or the most this reader may hold at once (it holds less
        # than a line's limit before each read, so there is always room).
        self.max_buffer = None
        # Called once when the client has been silent for limits.IDLE_AFTER
        # seconds while a line is awaited (the session's heap trim), then
        # cleared; None: nothing to do.
        self.on_idle = None

    def _recv(self, deadline):
        # Try first, wait only when nothing is there: a pipelining client
        # usually has the next command waiting already (one syscall saved).
        size = RECV_SIZE
        if self.max_buffer is not None:
            size = max(1, min(size, self.max_buffer - len(self.buf)))
        while True:
            try:
                data = self.sock.recv(size)
            except (BlockingIOError, InterruptedError):
                self._wait(deadline)
                continue
            except OSError as e:
                raise Disconnected(str(e)) from None
            if not data:
                raise Disconnected("end of stream")
            return data

    def _wait(self, deadline):
        if self.on_idle is None:
            wait_readable(self.sock, deadline)
            return
        try:
            wait_readable(self.sock, min(deadline, time.monotonic() + limits.IDLE_AFTER))
        except Timeout:
            if time.monotonic() >= deadline:
                raise
            idle, self.on_idle = self.on_idle, None
            idle()

    def read_line(self, deadline, max_line=None):
        """The next line without its CRLF (or bare LF), or OVERLONG as soon
        as a line passes the limit (so the client hears -ERR at once); the
        rest of that line is drained by the next call."""
        limit = max_line or self.max_line
        if self.draining:
            self._drain(deadline)
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                if end + 1 > limit:
                    del self.buf[:end + 1]
                    return OVERLONG
                line = bytes(self.buf[:end])
                del self.buf[:end + 1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(self.buf) >= limit:
                self.buf.clear()
                self.draining = True
                return OVERLONG
            self.buf += self._recv(deadline)

    def _drain(self, deadline):
        """Discard the rest of an overlong line, up to and including its
        LF, without storing it; past MAX_DRAIN the connection ends."""
        drained = 0
        while True:
            data = self._recv(deadline)
            end = data.find(b"\n")
            if end >= 0:
                self.buf += data[end + 1:]
                self.draining = False
                return
            drained += len(data)
            if drained > MAX_DRAIN:
                raise TooLong()

    def take_buffered(self):
        """Bytes read but not yet consumed (handed over with the socket)."""
        data = bytes(self.buf)
        self.buf.clear()
        return data
