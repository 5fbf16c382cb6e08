"""Stand-ins for what surrounds the client-input path, for property tests
and the fuzz target: a client socket that hands out scripted chunks, the
broker and child ends of a front's channels, a configuration and a maildrop.

Nothing here touches the network or privileges.  The code under test is
the daemon's own (LineReader, parse, FrontSession, ChildSession, sasl,
ipc); only TLS is simulated (SimulatedTLSFront): a real handshake needs a
real socket and is tests/system/test_tls.py's business.
"""
import collections
import os
import socket
import types

from popd import ipc, limits
from popd.ipc import Channel, Role
from popd.mail import mbox, uidl
from popd.pop3 import authorization, protocol, sasl
from popd.pop3.authorization import FrontSession
from popd.pop3.linereader import OVERLONG
from popd.pop3.transaction import ChildSession

# recv() on the scripted socket raises BlockingIOError for this chunk, so
# the reader's wait path runs (select() on an fd that is always readable).
WOULD_BLOCK = object()


class ScriptedSocket:
    """A non-blocking client socket: recv() hands out the scripted chunks
    (never more than asked for), then b"" (end of stream); send() takes at
    most send_limit bytes a call and records everything."""

    def __init__(self, chunks, send_limit=None):
        self.chunks = collections.deque(chunks)
        self.send_limit = send_limit
        self.sent = bytearray()
        self.received = 0                 # bytes handed to the reader
        self.recv_calls = 0
        self.closed = False
        # select() needs a real fd: one end of a pair whose other end has
        # written a byte, so it is always readable and writable.
        self._a, self._b = socket.socketpair()
        self._b.send(b"x")

    def fileno(self):
        return self._a.fileno()

    def setblocking(self, flag):
        pass

    def setsockopt(self, *args):
        pass

    def getsockopt(self, level, option):
        return self._a.getsockopt(level, option)      # SO_DOMAIN: AF_UNIX

    def recv(self, n):
        self.recv_calls += 1
        while self.chunks:
            chunk = self.chunks[0]
            if chunk is WOULD_BLOCK:
                self.chunks.popleft()
                raise BlockingIOError()
            if not chunk:
                self.chunks.popleft()
                continue
            data, rest = chunk[:n], chunk[n:]
            if rest:
                self.chunks[0] = rest
            else:
                self.chunks.popleft()
            self.received += len(data)
            return bytes(data)
        return b""

    def send(self, data):
        data = bytes(data[:self.send_limit] if self.send_limit else data)
        self.sent += data
        return len(data)

    def shutdown(self, how):
        pass

    def close(self):
        if not self.closed:
            self.closed = True
            self._a.close()
            self._b.close()


def model_lines(stream, limit):
    """What LineReader.read_line() must return for `stream`, in order: a
    segment ending in LF is a line (one trailing CR dropped) if it fits
    the limit with its LF, else OVERLONG; an unterminated tail is lost at
    the end of the stream, but is OVERLONG first once it reaches the limit
    (the reader answers before the line ends).  Holds while no line runs
    past linereader.MAX_DRAIN."""
    *complete, tail = stream.split(b"\n")
    out = []
    for segment in complete:
        if len(segment) + 1 > limit:
            out.append(OVERLONG)
        else:
            out.append(segment[:-1] if segment.endswith(b"\r") else segment)
    if len(tail) >= limit:
        out.append(OVERLONG)
    return out


def split(data, cuts):
    """data cut at the given offsets (sorted, deduplicated, in range)."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]


def config(max_bad_commands=10, plaintext="always", implementation=None,
           login_deadline=30, idle_timeout=600, login_delay=None, expire_days=None):
    """The keys FrontSession and ChildSession read, as config.load makes them."""
    return types.SimpleNamespace(
        limits=types.SimpleNamespace(max_bad_commands=max_bad_commands,
                                     login_deadline=login_deadline,
                                     idle_timeout=idle_timeout, login_delay=login_delay),
        auth=types.SimpleNamespace(plaintext=plaintext),
        mail=types.SimpleNamespace(expire_days=expire_days),
        implementation=implementation)


SIMULATED_TLS = "simulated TLS"


class SimulatedTLSFront(FrontSession):
    """A FrontSession whose TLS handshake always succeeds without TLS: the
    stream stays the scripted socket, everything else is the real code."""

    def start_tls(self):
        self.tls = SIMULATED_TLS


# Replies the broker or the child may give a front, chosen by a test.
AUTH_FAIL = ("AUTH_FAIL", {"code": "AUTH", "final": 0})
AUTH_FAIL_FINAL = ("AUTH_FAIL", {"code": "AUTH", "final": 1})
AUTH_OK = ("AUTH_OK", {})
MAILBOX_READY = ("MAILBOX_READY", {})
MAILBOX_ERR = ("MAILBOX_ERR", {"code": "IN-USE", "text": "Mailbox is locked"})


class FrontRun:
    """One login dialogue: a FrontSession over a scripted client, with the
    broker's and the child's answers queued on real SEQPACKET channels
    (after them each channel reads as closed, as when the broker gives up)."""

    def __init__(self, chunks, tls_mode="none", plaintext="always",
                 broker_answers=(AUTH_FAIL, AUTH_FAIL, AUTH_FAIL_FINAL),
                 child_answer=MAILBOX_READY, max_bad_commands=10,
                 send_limit=None, implementation=None):
        self.client = ScriptedSocket(chunks, send_limit)
        self.broker, self.broker_peer = ipc.socketpair()
        self.child, self.child_peer = ipc.socketpair()
        for name, fields in broker_answers:
            ipc.send(self.broker_peer, name, **fields)
        self.broker_peer.shutdown(socket.SHUT_WR)
        if child_answer is not None:
            name, fields = child_answer
            ipc.send(self.child_peer, name, **fields)
        self.child_peer.shutdown(socket.SHUT_WR)
        self.tls_mode = tls_mode
        self.session = SimulatedTLSFront(
            self.client, config(max_bad_commands, plaintext, implementation),
            self.broker, self.child, tls_mode=tls_mode, peer_ip="192.0.2.1")

    def run(self):
        """Greet and serve as front.run does; the outcome text."""
        session = self.session
        outcome = None
        if self.tls_mode == "implicit":
            try:
                session.start_tls()
            except protocol.Closing as e:
                outcome = str(e)
        if outcome is None:
            session.greet()
            outcome = session.serve()
        return outcome

    def frames(self):
        """Every frame the front sent the broker, decoded as the broker does
        (whatever the broker's state: the tests check the order)."""
        out = []
        self.broker_peer.setblocking(False)
        while True:
            try:
                data = self.broker_peer.recv(limits.MAX_FRAME + 1)
            except BlockingIOError:
                return out
            if not data:
                return out
            out.append(ipc.decode(data, Channel.BROKER_FRONT, Role.BROKER))

    def requests(self):
        """The AUTH_REQUESTs the front sent (LOGIN_DONE left out)."""
        return [m for m in self.frames() if m.name == "AUTH_REQUEST"]

    def close(self):
        for s in (self.broker, self.broker_peer, self.child, self.child_peer):
            s.close()
        self.client.close()


# Two messages, one with a line that needs dot-stuffing.
MBOX = (b"From alice@example.org Thu Nov 26 10:00:00 2026\n"
        b"From: a@example.org\nSubject: one\n\nHello\n.dot line\n\n"
        b"From bob@example.org Thu Nov 26 11:00:00 2026\n"
        b"From: b@example.org\nSubject: two\n\n>From quoted\nbye\n\n")


class StubMaildrop:
    """A maildrop over an in-memory mbox: the real scanner, index and UID
    assignment; update() only records what QUIT would delete (the update
    itself is test_mbox_update.py's business); nothing expires."""

    def __init__(self, data=MBOX):
        self.path = "(in memory)"
        self.fd = os.memfd_create("mbox", os.MFD_CLOEXEC)
        os.write(self.fd, data)
        self.index = mbox.scan(self.fd)
        self._ids = uidl.assign(uidl.compute_bases(self.fd, self.index), {})[0]
        self.updated = None

    def ids(self):
        return self._ids

    def expiring(self, retrieved):
        return set()

    def update(self, deleted, retrieved=()):
        self.updated = set(deleted)

    def close(self):
        # Like Maildrop.close(): QUIT closes before its +OK, the child again.
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def serve_child(chunks, leftover=b"", drop=None, send_limit=None, max_bad_commands=10):
    """A ChildSession over a scripted client; (session, outcome, output)."""
    client = ScriptedSocket(chunks, send_limit)
    own = drop is None
    drop = drop or StubMaildrop()
    try:
        session = ChildSession(client, config(max_bad_commands), drop, leftover)
        outcome = session.serve()
        return session, outcome, bytes(client.sent)
    finally:
        client.close()
        if own:
            drop.close()


# -- what the parser and a front may say ----------------------------------------

PARSE_ERRORS = {protocol.ERR_BAD_BYTES, protocol.ERR_UNKNOWN, protocol.ERR_ARG_LONG,
                protocol.ERR_ARGS}


def check_parsed(line, parsed):
    """Raise AssertionError unless parse(line) gave one of its error texts
    or (KEYWORD, args) within the command table's arity and bounds."""
    if isinstance(parsed, str):
        assert parsed in PARSE_ERRORS, parsed
        return
    keyword, args = parsed
    syntax = protocol.COMMANDS[keyword]
    assert syntax.min_args <= len(args) <= syntax.max_args
    assert line.split(b" ", 1)[0].upper() == keyword.encode()
    if syntax.rest_is_argument:
        assert all(isinstance(a, bytes) and a for a in args)
    else:
        for a in args:
            assert isinstance(a, str) and a.isascii() and a.isprintable()
            assert a and " " not in a and len(a) <= syntax.max_argument


# -- what a front may say ----------------------------------------------------
# Every text a front sends comes from a constant in these modules or from
# the literals below; test_protocol.py and the fuzz target check each
# reply line against this set.

def _constants(*modules):
    return {value for module in modules for name, value in vars(module).items()
            if name.startswith(("ERR_", "OK_")) and isinstance(value, str)}


FRONT_TEXTS = (_constants(protocol, authorization, sasl)
               | {authorization.GREETING, "", "Capability list follows",
                  "Mechanisms follow", "Bye", "Logged in", MAILBOX_ERR[1]["text"]})
FRONT_CODES = {None, "AUTH", "SYS/TEMP", "IN-USE"}


def front_body_lines(implementation=None):
    caps = set(protocol.SESSION_CAPABILITIES) | {b"USER", b"STLS", b"EXPIRE NEVER"}
    caps.add(b"SASL " + " ".join(sasl.MECHANISMS).encode())
    if implementation:
        caps.add(b"IMPLEMENTATION " + implementation.encode())
    return caps | {m.encode() for m in sasl.MECHANISMS} | {b"."}


def check_front_output(output, implementation=None):
    """Raise AssertionError unless every line the front wrote is a known
    reply (status, continuation or multi-line body) within RFC bounds."""
    if not output:
        return
    assert output.endswith(b"\r\n"), output[-80:]
    bodies = front_body_lines(implementation)
    for line in output[:-2].split(b"\r\n"):
        assert len(line) + 2 <= 512, line[:80]
        if line == b"+ ":
            continue
        if line in bodies:
            continue
        status, _, rest = line.partition(b" ")
        assert status in (b"+OK", b"-ERR"), line[:80]
        code = None
        if rest.startswith(b"["):
            code, _, rest = rest[1:].partition(b"] ")
            code = code.decode("ascii")
        assert code in FRONT_CODES, line[:80]
        assert rest.decode("ascii") in FRONT_TEXTS, line[:80]
