"""The POP3 engine: command table, dispatch by state and arity, replies.

Runs in: the front (AUTHORIZATION state) and the child (TRANSACTION).

One table declares every command's states and arity; handlers (in
authorization.py and transaction.py) never see a malformed call.  Replies
are built from constants: client input is never echoed back (a reflected
line is the raw material of cross-protocol attacks).  Every reply line is
checked against RFC 2449's 512-octet bound.
"""
import enum
import select
import socket
import time
from dataclasses import dataclass

from popd import limits
from popd.pop3.linereader import OVERLONG, Disconnected, LineReader, Timeout, TooLong


class State(enum.Enum):
    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"


AUTH, TRANS = State.AUTHORIZATION, State.TRANSACTION
# Plain ints, compared with SO_DOMAIN's: socket.family would build an
# AddressFamily member through enum's Python code on every connection.
_TCP_FAMILIES = (int(socket.AF_INET), int(socket.AF_INET6))


@dataclass(frozen=True)
class Syntax:
    # A tuple: `in` compares the members by identity in C, where a set
    # would call Enum.__hash__, Python code whose pages each session copies.
    states: tuple
    min_args: int
    max_args: int
    rest_is_argument: bool = False   # PASS: the password may contain spaces
    max_argument: int = 40           # RFC 1939 section 3


COMMANDS = {
    "CAPA": Syntax((AUTH, TRANS), 0, 0),
    "QUIT": Syntax((AUTH, TRANS), 0, 0),
    # A login may be an address, as long as the broker accepts (RFC 1939's
    # 40 characters is what a client may count on, not a server's limit).
    "USER": Syntax((AUTH,), 1, 1, max_argument=limits.MAX_LOGIN),
    "PASS": Syntax((AUTH,), 1, 1, rest_is_argument=True),
    "STLS": Syntax((AUTH,), 0, 0),
    # RFC 5034: AUTH [mechanism [initial-response]]; no argument lists them.
    "AUTH": Syntax((AUTH,), 0, 2,
                   max_argument=limits.MAX_COMMAND_LINE),   # initial response
    "STAT": Syntax((TRANS,), 0, 0),
    "LIST": Syntax((TRANS,), 0, 1),
    "RETR": Syntax((TRANS,), 1, 1),
    "DELE": Syntax((TRANS,), 1, 1),
    "NOOP": Syntax((TRANS,), 0, 0),
    "RSET": Syntax((TRANS,), 0, 0),
    "TOP": Syntax((TRANS,), 2, 2),
    "UIDL": Syntax((TRANS,), 0, 1),
}

# Reply texts: constants, never built from client input.
# RFC 1939: the line that ends every multi-line reply (the one place it is
# written; RETR and TOP stream the message before it).
TERMINATOR = b".\r\n"
# RFC 2449: what the logged-in session implements, offered in every state.
SESSION_CAPABILITIES = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]


def policy_capabilities(cfg):
    """RFC 2449 EXPIRE and LOGIN-DELAY, exactly as enforced: EXPIRE NEVER
    when mail.expire_days is unset (popd then removes only what clients
    delete), LOGIN-DELAY only when limits.login_delay is set."""
    days = cfg.mail.expire_days
    caps = [b"EXPIRE NEVER" if days is None else b"EXPIRE %d" % days]
    if cfg.limits.login_delay:
        caps.append(b"LOGIN-DELAY %d" % cfg.limits.login_delay)
    return caps


ERR_UNKNOWN = "Unknown command"
ERR_STATE = "Command not valid in this state"
ERR_ARGS = "Wrong number of arguments"
ERR_ARG_LONG = "Argument too long"
ERR_BAD_BYTES = "Invalid characters in command"
ERR_LINE_LONG = "Line too long"
ERR_LINE_LONG_CLOSING = "Line too long, closing connection"
ERR_TOO_MANY_BAD = "Too many bad commands, closing connection"
ERR_IDLE = "Disconnected for inactivity"


class Closing(Exception):
    """Raised by a handler (or the engine) to end the session."""


def parse(line):
    """bytes -> (KEYWORD, [args]) or an error text.  Control bytes (NUL,
    bare CR, ...) are refused everywhere; 8-bit bytes only inside a
    rest-of-line argument (a UTF-8 password), which stays bytes."""
    if any(b < 0x20 or b == 0x7F for b in line):
        return ERR_BAD_BYTES
    keyword, _, rest = line.partition(b" ")
    syntax = COMMANDS.get(keyword.upper().decode("latin-1"))
    if syntax is None:
        return ERR_UNKNOWN
    if syntax.rest_is_argument:
        args = [rest] if rest else []
    else:
        if not rest.isascii():
            return ERR_BAD_BYTES
        args = rest.decode("ascii").split()
        if any(len(a) > syntax.max_argument for a in args):
            return ERR_ARG_LONG
    if not syntax.min_args <= len(args) <= syntax.max_args:
        return ERR_ARGS
    return keyword.upper().decode("ascii"), args


class Session:
    """A command loop over one client socket.  Subclasses provide the
    handlers (`cmd_<keyword>` methods) and the deadline policy."""

    state = AUTH

    def __init__(self, sock, max_bad_commands, initial=b""):
        self.sock = sock
        self.sock.setblocking(False)
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN) in _TCP_FAMILIES:
            # Every reply is one write that must leave now: with Nagle, a
            # short reply after a long one waits for the client's delayed
            # ACK (the 40 ms stalls measured on popa3d).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = LineReader(sock, limits.MAX_COMMAND_LINE, initial)
        self.bad_budget = max_bad_commands
        self.out = bytearray()

    # -- output -------------------------------------------------------------
    def reply(self, ok, text, code=None):
        status = "+OK" if ok else "-ERR"
        line = " ".join(x for x in (status, f"[{code}]" if code else "", text) if x)
        data = line.encode("ascii") + b"\r\n"
        assert len(data) <= limits.MAX_RESPONSE_LINE, line
        self.out += data

    def ok(self, text="", code=None):
        self.reply(True, text, code)

    def err(self, text, code=None):
        self.reply(False, text, code)

    def multiline(self, lines):
        """Lines of a multi-line reply, dot-stuffed, plus the terminator."""
        for line in lines:
            if line.startswith(b"."):
                line = b"." + line
            self.out += line + b"\r\n"
        self.out += TERMINATOR

    def flush(self):
        """Write everything queued.  Replies are written before the next
        command is read, so output buffering stays bounded however much a
        client pipelines; the deadline bounds a client that stops reading."""
        try:
            self.send_all(self.out)
        finally:
            self.out.clear()

    def send_all(self, data):
        view = memoryview(data)
        deadline = time.monotonic() + self.write_timeout()
        sent = 0
        try:
            while sent < len(view):
                try:
                    sent += self.sock.send(view[sent:])
                    continue
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as e:
                    raise Disconnected(str(e)) from None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Disconnected("write timeout")
                select.select([], [self.sock], [], remaining)
        finally:
            view.release()

    # -- policy hooks ------------------------------------------------------
    def deadline(self):
        raise NotImplementedError

    def write_timeout(self):
        raise NotImplementedError

    def on_timeout(self):
        self.err(ERR_IDLE)

    # -- the loop ------------------------------------------------------------
    def serve(self):
        """Read, dispatch and answer until QUIT, a timeout or a disconnect."""
        try:
            while True:
                self.flush()
                try:
                    line = self.reader.read_line(self.deadline())
                except Timeout:
                    self.on_timeout()
                    self.flush()
                    return "timeout"
                if line is OVERLONG:
                    self.bad(ERR_LINE_LONG)
                    continue
                parsed = parse(line)
                if isinstance(parsed, str):
                    self.bad(parsed)
                    continue
                keyword, args = parsed
                if self.state not in COMMANDS[keyword].states:
                    self.bad(ERR_STATE)
                    continue
                handler = getattr(self, "cmd_" + keyword.lower(), None)
                if handler is None:
                    self.bad(ERR_UNKNOWN)       # declared, not offered here
                    continue
                handler(*args)
                self.after_command()
        except Closing as e:
            self.flush_quietly()
            return str(e) or "closed"
        except TooLong:
            self.err(ERR_LINE_LONG_CLOSING)
            self.flush_quietly()
            return "line too long"
        except Disconnected:
            return "disconnected"

    def after_command(self):
        """Called after each command a handler answered."""

    def bad(self, text):
        """An -ERR that spends the bad-command budget."""
        self.bad_budget -= 1
        if self.bad_budget < 0:
            self.err(ERR_TOO_MANY_BAD)
            raise Closing("too many bad commands")
        self.err(text)

    def flush_quietly(self):
        try:
            self.flush()
        except Disconnected:
            pass

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
