"""What the system tests talk to the daemon with: the sample mailboxes and
their messages, poplib logins (from a chosen source address too), the
checks that the daemon still serves, raw sockets, and a line client that
can switch to TLS mid-stream."""
import poplib
import socket

from tests import replies
from tests.daemon import USERS

MBOX = (b"From alice@example.org Thu Nov 26 10:00:00 2026\n"
        b"From: a@example.org\nSubject: one\n\nHello\n.dot line\n\n"
        b"From bob@example.org Thu Nov 26 11:00:00 2026\n"
        b"From: b@example.org\nSubject: two\n\n>From quoted\nbye\n\n")
# Message 1 as sent: "From: a@example.org\r\nSubject: one\r\n\r\nHello\r\n.dot line\r\n"
OCTETS = [len(b"From: a@example.org\r\nSubject: one\r\n\r\nHello\r\n.dot line\r\n"),
          len(b"From: b@example.org\r\nSubject: two\r\n\r\n>From quoted\r\nbye\r\n")]
# Two plain messages: no dot-stuffing, no quoted From (the install and
# service script tests).
PLAIN_MBOX = (b"From a@example.org Thu Nov 26 10:00:00 2026\nSubject: one\n\nHello\n\n"
              b"From b@example.org Thu Nov 26 11:00:00 2026\nSubject: two\n\nBye\n")


def msg(n, extra=b""):
    return (b"From sender%d@example.org Thu Nov 26 10:00:00 2026\n"
            b"From: s%d@example.org\nSubject: message %d\n%s\nbody %d\n.starts with dot\n\n"
            % (n, n, n, extra, n))


class SourcePOP3(poplib.POP3):
    """poplib from a chosen source address (127.0.0.2 is loopback too),
    through the socket hook its own POP3_SSL overrides."""

    def __init__(self, host, port, source, timeout=10):
        self.source = source
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self.source, 0))


def login(d, user="alice", source=None):
    password = USERS[user][0]
    if source:
        client = SourcePOP3(d.host, d.port, source)
    else:
        client = poplib.POP3(d.host, d.port, timeout=10)
    client.user(user)
    client.pass_(password)
    return client


def connect_raw(d, source="127.0.0.1"):
    s = socket.create_connection((d.host, d.port), timeout=10, source_address=(source, 0))
    return s, s.makefile("rb")


def still_serves(d):
    c = login(d)
    assert c.stat()[0] == 2
    c.quit()


def login_from(d, user, source="127.0.0.1"):
    """Logged in as `user` from `source`, with a 30 s timeout that waits
    out the broker's delays."""
    c = SourcePOP3(d.host, d.port, source, timeout=30)
    assert c.getwelcome().startswith(replies.GREETING)
    c.user(user)
    c.pass_(USERS[user][0])
    return c


def served(d, user="bob", source="127.0.0.99"):
    c = login_from(d, user, source)
    assert c.stat()[0] >= 0
    c.quit()


# A password whose PLAIN initial response is longer than RFC 1939's 40
# characters per argument (but fits the 255-octet command line).
CAROL = ("a much longer passphrase, 40 characters!", 61003, 61003)
USERS_TLS = {**USERS, "carol": CAROL}


class Client:
    """A line-oriented POP3 client over a socket that can switch to TLS.
    It keeps its own buffer, so a test can prove that nothing arrived in
    the clear between STLS's +OK and the handshake."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    @classmethod
    def connect(cls, d, port=None, timeout=10):
        return cls(socket.create_connection((d.host, port or d.port), timeout=timeout))

    @classmethod
    def implicit(cls, d, ctx=None, **kw):
        client = cls.connect(d, d.tls_port)
        client.wrap(ctx or d.client_context(), **kw)
        return client

    def wrap(self, ctx, **kw):
        assert self.buf == b"", self.buf
        self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost", **kw)

    def send(self, data):
        self.sock.sendall(data)

    def line(self):
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(self.buf)
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def command(self, text):
        self.send(text + b"\r\n")
        return self.line()

    def multiline(self):
        lines = []
        while (line := self.line()) != b".":
            lines.append(line[1:] if line.startswith(b"..") else line)
        return lines

    def capa(self):
        assert self.command(b"CAPA").startswith(b"+OK")
        return self.multiline()

    def starttls(self, d, **kw):
        assert self.command(b"STLS") == replies.BEGIN_TLS
        self.wrap(d.client_context(), **kw)

    def login(self, user="alice"):
        assert self.command(b"USER " + user.encode()) == b"+OK"
        assert self.command(b"PASS " + USERS_TLS[user][0].encode()) == replies.LOGGED_IN

    def close(self):
        self.sock.close()
