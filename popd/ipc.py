"""The whole IPC vocabulary, strict framing and fd passing; no policy.

Runs in: every process.  Each pair of processes talks over its own
AF_UNIX SOCK_SEQPACKET socketpair made by the supervisor (or, for the
child-front pair, by the child).  A peer's identity is which socketpair a
frame arrived on; SO_PEERCRED on a socketpair names its creator, not the
peer, so it proves nothing.

    frame = version u8 | type u8 | length u16 | fields        (<= 4096 bytes)
    field = length u16 | bytes                                 (checked first)

Every message is declared once in MESSAGES with the channel it travels on,
the role that sends it, its fields, how many fds ride with it and the
receiver's states in which it is accepted.  recv() checks all of that
against the receiver's current state, decodes to the last byte, and
refuses a second copy of a message declared `once` on the same channel end
(OpenSSH's MON_ONCE: a slot is ready once, a child is granted once, a front
hands over once); anything else raises Violation and the caller closes the
channel.  A receiver's states are the values of its state enum (the
child's ChildState, the broker's ChannelState per slot, the supervisor's
SlotState and LinkState, the front's FrontState); tests/unit/test_ipc.py
checks that every state named here exists there.

One login, every frame in order (USER/PASS and AUTH PLAIN alike):

        from        to          frame
      1 supervisor  broker      CHANNEL_BIND     the slot chosen for a new connection, its address
      2 supervisor  child       CONNECTION (fd)  the client socket (the supervisor read none of it)
      3 child       front       CLIENT (fd)      the same; the front greets, reads USER/PASS
      4 front       broker      AUTH_REQUEST
      5 broker      worker      VERIFY           (VERIFY_PAM for the pam backend)
      6 worker      broker      VERIFIED
      7 broker      child       GRANT            login, uid, gid, mbox
      8 broker      supervisor  GRANTED          the same: the supervisor prepares the state dir
      9 broker      front       AUTH_OK
     10 supervisor  child       STATE_DIR_READY  (SESSION_REFUSED: the maildrop is in use);
                                                 may come before 9; the child then becomes the
                                                 owner and opens the mailbox
     11 child       front       MAILBOX_READY    (MAILBOX_ERR); the front answers "+OK"
     12 front       broker      LOGIN_DONE       only now does the success count
     13 front       child       HANDOVER (fd)    the client or the TLS pipe, pipelined bytes
        ... the session ...
        (child -> supervisor: SESSION_STARTED, then SESSION_PROGRESS)
     14 child       supervisor  CHILD_DONE       with the session's final counts
     15 supervisor  broker      SESSION_ENDED    limits.login_delay counts from here

A wrong password gets AUTH_FAIL (broker -> front) in place of 7 to 13.

SEQPACKET traps (measured on Linux; tests/unit/test_ipc.py): recv(n)
silently truncates a longer datagram, so we read max+1 and refuse
MSG_TRUNC; ancillary space offered on a channel that expects no fds lets
the peer push fds into us, so it is offered only where a message of that
channel carries fds, and extra or unexpected fds are closed.
"""
import array
import enum
import socket
import struct
import weakref
from dataclasses import dataclass

from popd import limits

VERSION = 1
_HEADER = struct.Struct("!BBH")
_FIELD_LEN = struct.Struct("!H")
# As plain ints: socket's flags are IntFlag members, and combining them runs
# enum's Python code, whose pages each slot would copy (unix/process.py).
_SEND_FLAGS = int(socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
_TRUNCATED = int(socket.MSG_TRUNC | socket.MSG_CTRUNC)
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


class Channel(enum.Enum):
    SUPERVISOR_CHILD = "supervisor-child"
    SUPERVISOR_BROKER = "supervisor-broker"
    BROKER_FRONT = "broker-front"
    BROKER_CHILD = "broker-child"
    CHILD_FRONT = "child-front"
    BROKER_WORKER = "broker-worker"
    SUPERVISOR_SPAWNER = "supervisor-spawner"
    SUPERVISOR_EXPORTER = "supervisor-exporter"


class Role(enum.Enum):
    SUPERVISOR = "supervisor"
    BROKER = "broker"
    CHILD = "child"
    FRONT = "front"
    WORKER = "worker"
    SPAWNER = "spawner"
    EXPORTER = "exporter"


class Violation(Exception):
    """The peer sent something outside the vocabulary; close the channel."""


class Closed(Exception):
    """The peer closed the channel (or sent an empty datagram, which reads
    the same; either way the channel is finished)."""


# Field kinds: ("u32",), ("u64",), ("str", max_bytes), ("bytes", max_bytes)
# or ("str", max_bytes, allowed): a string that must be one of `allowed`.
U32 = ("u32",)
U64 = ("u64",)
_INTS = {"u32": _U32, "u64": _U64}


def STR(n):
    return ("str", n)


def BYTES(n):
    return ("bytes", n)


def ONE_OF(*allowed):
    return ("str", max(len(a.encode()) for a in allowed), allowed)


@dataclass(frozen=True)
class Spec:
    name: str
    code: int
    channel: Channel
    sender: Role
    fields: tuple
    fds: int = 0
    # The receiver's states (its state enum's values) in which the message
    # is accepted; ANY where the receiver keeps no state for the channel
    # (a worker, the spawner, the broker's end towards the supervisor).
    states: tuple | None = None
    once: bool = False    # at most once on a channel end, for its whole life


ANY = None


_C, _R = Channel, Role
# A client connection (its socket is the frame's one fd): the supervisor
# tells the child in CONNECTION, the child tells its front in CLIENT.
# `session` is the id the supervisor gives the connection at accept, which
# every process's log lines about it carry (logsetup.Logger).
_CLIENT_FIELDS = (("peer_ip", STR(64)), ("peer_port", U32), ("listener", STR(80)),
                  ("tls", STR(16)), ("session", STR(16)))
MESSAGES = [
    # supervisor <-> child: slot life cycle.  The supervisor's states are
    # the slot's (SlotState), the child's its own (ChildState).
    Spec("SLOT_READY", 0x11, _C.SUPERVISOR_CHILD, _R.CHILD, (("front_pid", U32),),
         states=("starting",), once=True),
    Spec("CONNECTION", 0x10, _C.SUPERVISOR_CHILD, _R.SUPERVISOR, _CLIENT_FIELDS, fds=1,
         states=("idle",), once=True),
    Spec("STATE_DIR_READY", 0x12, _C.SUPERVISOR_CHILD, _R.SUPERVISOR,
         (("uid", U32),), states=("granted",), once=True),
    # Instead of STATE_DIR_READY: the maildrop is held by another session
    # (sessions.py); the child answers the front with this RFC 3206 code.
    Spec("SESSION_REFUSED", 0x14, _C.SUPERVISOR_CHILD, _R.SUPERVISOR,
         (("code", STR(16)),), states=("granted",), once=True),
    # A granted child has logged how its slot ended and is exiting; a
    # granted child that exits without it was killed (or crashed), and the
    # supervisor logs the session's end for it.  It may come before the
    # broker's GRANTED is read: the slot is busy either way.
    Spec("CHILD_DONE", 0x13, _C.SUPERVISOR_CHILD, _R.CHILD,
         (("bytes_sent", U64), ("retrieved", U32), ("deleted", U32)), states=("busy",),
         once=True),
    # The session has begun (the child serves the client; SIGUSR1 now ends
    # it as a kick), and how it goes, at most once a second: for `popd ctl
    # who` and the counters; the supervisor trusts these for nothing else.
    Spec("SESSION_STARTED", 0x15, _C.SUPERVISOR_CHILD, _R.CHILD, (("tls", STR(120)),),
         states=("busy",), once=True),
    Spec("SESSION_PROGRESS", 0x17, _C.SUPERVISOR_CHILD, _R.CHILD,
         (("bytes_sent", U64), ("retrieved", U32), ("deleted", U32)), states=("busy",)),
    # supervisor <-> spawner: fork a slot whose child gets these channel
    # ends (supervisor, front-broker, child-broker); the answer carries the
    # child's pidfd.
    Spec("SPAWN", 0x20, _C.SUPERVISOR_SPAWNER, _R.SUPERVISOR, (("slot", U32),), fds=3,
         states=ANY),
    Spec("SPAWNED", 0x21, _C.SUPERVISOR_SPAWNER, _R.SPAWNER,
         (("slot", U32), ("pid", U32)), fds=1, states=ANY),
    # supervisor <-> broker: channel registration, grants for the state dir.
    # The supervisor's states are the broker link's (LinkState); a slot's
    # own state is the handler's to check.
    Spec("CHANNELS_NEW", 0x30, _C.SUPERVISOR_BROKER, _R.SUPERVISOR,
         (("slot", U32),), fds=2, states=ANY),
    Spec("CHANNEL_BIND", 0x32, _C.SUPERVISOR_BROKER, _R.SUPERVISOR,
         (("slot", U32), ("peer_ip", STR(64)), ("session", STR(16))), states=ANY),
    Spec("BROKER_READY", 0x31, _C.SUPERVISOR_BROKER, _R.BROKER, (),
         states=("starting",), once=True),
    # a granted session's child is gone: limits.login_delay counts from now
    Spec("SESSION_ENDED", 0x34, _C.SUPERVISOR_BROKER, _R.SUPERVISOR,
         (("login", STR(limits.MAX_LOGIN)),), states=ANY),
    # The broker's counters since it started, at most once a second when
    # they moved (`popd ctl stats`, metrics).
    Spec("BROKER_STATS", 0x35, _C.SUPERVISOR_BROKER, _R.BROKER,
         (("queued", U32), ("workers", U32), ("ok_pass", U64), ("ok_plain", U64),
          ("failed_pass", U64), ("failed_plain", U64), ("delayed", U64),
          ("delay_ms", U64)), states=("ready",)),
    Spec("GRANTED", 0x33, _C.SUPERVISOR_BROKER, _R.BROKER,
         (("slot", U32), ("uid", U32), ("gid", U32),
          ("login", STR(limits.MAX_LOGIN)), ("mbox", STR(1024))), states=("ready",)),
    # front <-> broker: one request at a time, one answer each.  The
    # broker's states are its slot channel's (ChannelState).
    Spec("AUTH_REQUEST", 0x41, _C.BROKER_FRONT, _R.FRONT,
         (("authzid", STR(limits.MAX_LOGIN)), ("authcid", STR(limits.MAX_LOGIN)),
          ("secret", BYTES(limits.MAX_SECRET)), ("method", ONE_OF("PASS", "PLAIN"))),
         states=("bound",)),
    Spec("AUTH_OK", 0x40, _C.BROKER_FRONT, _R.BROKER, (), states=("authenticating",),
         once=True),
    # After AUTH_OK: the client was told +OK.  Only then does the broker
    # count the login as a success (throttle.py's recent-success record).
    Spec("LOGIN_DONE", 0x43, _C.BROKER_FRONT, _R.FRONT, (), states=("granted",),
         once=True),
    # final=1: the channel has spent its attempts and closes after this.
    Spec("AUTH_FAIL", 0x42, _C.BROKER_FRONT, _R.BROKER,
         (("code", STR(16)), ("final", U32)), states=("authenticating",)),
    # broker -> child: the one grant
    Spec("GRANT", 0x50, _C.BROKER_CHILD, _R.BROKER,
         (("login", STR(limits.MAX_LOGIN)), ("uid", U32), ("gid", U32),
          ("mbox", STR(1024))), states=("busy",), once=True),
    # broker <-> its hashing workers: one verification at a time
    Spec("VERIFY", 0x60, _C.BROKER_WORKER, _R.BROKER,
         (("job", U32), ("stored", STR(1024)), ("secret", BYTES(limits.MAX_SECRET))),
         states=ANY),
    # The pam backend: the worker asks PAM; ok 2 = right password, but
    # pam_acct_mgmt refused the account (expired, locked...).
    Spec("VERIFY_PAM", 0x62, _C.BROKER_WORKER, _R.BROKER,
         (("job", U32), ("login", STR(limits.MAX_LOGIN)),
          ("secret", BYTES(limits.MAX_SECRET))), states=ANY),
    Spec("VERIFIED", 0x61, _C.BROKER_WORKER, _R.WORKER, (("job", U32), ("ok", U32)),
         states=ANY),
    # child <-> front
    # The connection as the supervisor passed it, on to the front.
    Spec("CLIENT", 0x70, _C.CHILD_FRONT, _R.CHILD, _CLIENT_FIELDS, fds=1,
         states=("idle",), once=True),
    Spec("MAILBOX_READY", 0x72, _C.CHILD_FRONT, _R.CHILD, (), states=("opening",),
         once=True),
    Spec("MAILBOX_ERR", 0x74, _C.CHILD_FRONT, _R.CHILD,
         (("code", STR(16)), ("text", STR(200))), states=("opening",), once=True),
    # tls: "none" or the protocol and cipher, for the session's log lines.
    Spec("HANDOVER", 0x71, _C.CHILD_FRONT, _R.FRONT,
         (("leftover", BYTES(limits.MAX_LEFTOVER)), ("tls", STR(120))), fds=1,
         states=("owner",), once=True),
    Spec("LOG", 0x73, _C.CHILD_FRONT, _R.FRONT,
         (("level", U32), ("text", STR(1000))), states=("busy", "granted", "owner")),
    # supervisor <-> metrics exporter (metrics.listen): the exporter asks
    # for the text once per scrape, one question at a time, and gets it in
    # pieces (more=1 until the last); it says nothing else, and the
    # supervisor reads nothing but these.  The supervisor's states are the
    # exporter link's (ExporterLinkState), the exporter's its own (ExporterState).
    Spec("EXPORTER_READY", 0x81, _C.SUPERVISOR_EXPORTER, _R.EXPORTER, (),
         states=("starting",), once=True),
    Spec("METRICS_ASK", 0x83, _C.SUPERVISOR_EXPORTER, _R.EXPORTER, (), states=("ready",)),
    Spec("METRICS_TEXT", 0x80, _C.SUPERVISOR_EXPORTER, _R.SUPERVISOR,
         (("text", BYTES(limits.MAX_FRAME - 16)), ("more", U32)), states=("asking",)),
]
BY_NAME = {m.name: m for m in MESSAGES}
# The `once` messages each channel end (a socket object) has received.
_SEEN = weakref.WeakKeyDictionary()
BY_CODE = {m.code: m for m in MESSAGES}
assert len(BY_CODE) == len(MESSAGES)
# The numbering rule: the high digit (hex) is the channel's number, and the
# low digit is even for what the role named first in the channel sends
# ("broker-front": the broker), odd for what the other role sends.  A
# frame's type then says on its own where it may travel and which way.
CHANNEL_NUMBERS = {Channel.SUPERVISOR_CHILD: 1, Channel.SUPERVISOR_SPAWNER: 2,
                   Channel.SUPERVISOR_BROKER: 3, Channel.BROKER_FRONT: 4,
                   Channel.BROKER_CHILD: 5, Channel.BROKER_WORKER: 6, Channel.CHILD_FRONT: 7,
                   Channel.SUPERVISOR_EXPORTER: 8}
assert all(m.code >> 4 == CHANNEL_NUMBERS[m.channel]
           and m.code & 1 == (m.sender.value != m.channel.value.split("-")[0])
           for m in MESSAGES)


def _max_fds(channel, receiver):
    """Most fds any message arriving at `receiver` on `channel` carries."""
    return max((m.fds for m in MESSAGES
                if m.channel is channel and m.sender is not receiver), default=0)


@dataclass
class Message:
    name: str
    fields: dict
    fds: list

    def __getattr__(self, item):
        try:
            return self.fields[item]
        except KeyError:
            raise AttributeError(item) from None


def socketpair():
    """A SEQPACKET pair; both ends are close-on-exec (popd never execs)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def encode(name, **values):
    spec = BY_NAME[name]
    body = bytearray()
    for fname, kind in spec.fields:
        v = values[fname]
        if kind[0] in _INTS:
            raw = _INTS[kind[0]].pack(v)
        elif kind[0] == "str":
            raw = v.encode("utf-8")
        else:
            raw = bytes(v)
        if kind[0] not in _INTS and len(raw) > kind[1]:
            raise ValueError(f"{name}.{fname}: {len(raw)} bytes > {kind[1]}")
        if len(kind) > 2 and v not in kind[2]:
            raise ValueError(f"{name}.{fname}: {v!r} is not one of {kind[2]}")
        body += _FIELD_LEN.pack(len(raw)) + raw
    if set(values) != {f for f, _ in spec.fields}:
        raise ValueError(f"{name}: fields {sorted(values)}")
    frame = _HEADER.pack(VERSION, spec.code, len(body)) + body
    if len(frame) > limits.MAX_FRAME:
        raise ValueError(f"{name}: frame of {len(frame)} bytes")
    return frame


def send(sock, name, fds=(), **values):
    """Send one frame; never blocks (a peer that stops reading is a dead
    peer: BlockingIOError propagates as OSError to the caller)."""
    frame = encode(name, **values)
    spec = BY_NAME[name]
    if len(fds) != spec.fds:
        raise ValueError(f"{name} carries {spec.fds} fds, not {len(fds)}")
    anc = []
    if fds:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
    sock.sendmsg([frame], anc, _SEND_FLAGS)


def recv(sock, channel, receiver, state=None):
    """Read and validate one frame sent to `receiver`, now in `state` (its
    state enum member, or None where it keeps none), on `channel`."""
    nfds = _max_fds(channel, receiver)
    ancsize = socket.CMSG_SPACE(nfds * 4) if nfds else 0
    try:
        data, anc, flags, _ = sock.recvmsg(limits.MAX_FRAME + 1, ancsize)
    except (BlockingIOError, InterruptedError):
        raise
    except OSError as e:
        raise Closed(str(e)) from None
    fds = _collect_fds(anc)
    try:
        if not data:
            raise Closed("end of channel")
        if flags & _TRUNCATED:
            raise Violation("truncated frame or control data")
        msg = decode(data, channel, receiver)
        spec = BY_NAME[msg.name]
        if len(fds) != spec.fds:
            raise Violation(f"{msg.name} with {len(fds)} fds")
        if spec.states is not ANY:
            assert state is not None, f"{msg.name}: the receiver must name its state"
            # _value_, the member's own attribute (.value is enum's Python
            # property).
            if state._value_ not in spec.states:
                raise Violation(f"{msg.name} in state {state._value_}")
    except (Closed, Violation):
        for fd in fds:
            _close(fd)
        raise
    msg.fds = fds
    if spec.once:
        seen = _SEEN.setdefault(sock, set())
        if msg.name in seen:
            for fd in fds:
                _close(fd)
            raise Violation(f"a second {msg.name}")
        seen.add(msg.name)
    return msg


def decode(data, channel, receiver):
    if len(data) < _HEADER.size:
        raise Violation(f"short frame ({len(data)} bytes)")
    version, code, length = _HEADER.unpack_from(data)
    if version != VERSION:
        raise Violation(f"version {version}")
    if length != len(data) - _HEADER.size:
        raise Violation(f"length field {length} for {len(data)} bytes")
    spec = BY_CODE.get(code)
    if spec is None:
        raise Violation(f"unknown type {code}")
    if spec.channel is not channel or spec.sender is receiver:
        raise Violation(f"{spec.name} is not valid on {channel.value} "
                        f"towards {receiver.value}")
    pos, fields = _HEADER.size, {}
    for fname, kind in spec.fields:
        if pos + 2 > len(data):
            raise Violation(f"{spec.name}.{fname} missing")
        (n,) = _FIELD_LEN.unpack_from(data, pos)
        pos += 2
        if pos + n > len(data):
            raise Violation(f"{spec.name}.{fname} runs past the frame")
        raw = data[pos:pos + n]
        pos += n
        if kind[0] in _INTS:
            shape = _INTS[kind[0]]
            if n != shape.size:
                raise Violation(f"{spec.name}.{fname}: {kind[0]} of {n} bytes")
            fields[fname] = shape.unpack(raw)[0]
            continue
        if n > kind[1]:
            raise Violation(f"{spec.name}.{fname}: {n} bytes > {kind[1]}")
        if kind[0] == "str":
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise Violation(f"{spec.name}.{fname}: not UTF-8") from None
            if "\0" in text:
                raise Violation(f"{spec.name}.{fname}: NUL")
            if len(kind) > 2 and text not in kind[2]:
                raise Violation(f"{spec.name}.{fname}: {text!r} is not allowed")
            fields[fname] = text
        else:
            fields[fname] = raw
    if pos != len(data):
        raise Violation(f"{spec.name}: {len(data) - pos} trailing bytes")
    return Message(spec.name, fields, [])


def _collect_fds(anc):
    fds = []
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(payload[:len(payload) - len(payload) % arr.itemsize])
            fds.extend(arr)
    return fds


def _close(fd):
    try:
        socket.close(fd)
    except OSError:
        pass


# -- the lock helper's channel ----------------------------------------------
# The session child and its lock helper (slot/lock_helper.py) do not speak
# frames: over their SOCK_SEQPACKET pair each request and each answer is
# one datagram of these bytes, the helper answers every request once, and
# anything else (another byte, a longer datagram, ancillary data, EOF)
# ends the helper.  The lock file's path is fixed when the helper is
# forked: nothing sent on this channel names a file.
HELPER_LOCK = b"L"              # one attempt at <mbox>.lock, stale locks included
HELPER_UNLOCK = b"U"            # remove it if it is ours
HELPER_OK = b"O"
HELPER_OK_BROKE = b"S"          # OK, after removing a stale lock
HELPER_BUSY = b"B"
HELPER_UNAVAILABLE = b"N"       # the helper may not create the lock
HELPER_ERROR = b"E"             # followed by the errno in decimal
HELPER_READY = b"R"             # once, unasked, after the helper's drop was proved
