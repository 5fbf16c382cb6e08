"""POP3 AUTHORIZATION state: the commands a client may send before login.

Runs in: the front (uid login_user, chrooted, no capabilities).

The front never decides whether a password is right: PASS and AUTH PLAIN
become the same AUTH_REQUEST to the broker, and only the child (once it is
the mailbox owner and holds the mailbox) can make the front say +OK.
Every wait, the TLS handshake included, is bounded by the login deadline
that started when the front received the connection.

Plaintext credentials (USER/PASS, SASL PLAIN) are accepted only where
auth.plaintext allows them: over TLS, or everywhere with `always`.  Where
they are not, CAPA does not offer them and they are refused with [AUTH]
before anything reaches the broker.
"""
import enum
import select
import time

from popd import ipc, limits
from popd.ipc import Channel, Role
from popd.pop3 import sasl
from popd.pop3.linereader import OVERLONG, Timeout
from popd.pop3.protocol import SESSION_CAPABILITIES, Closing, Session, State, policy_capabilities
from popd.unix import tls
from popd.unix.logsetup import log

GREETING = "POP3 server ready"
ERR_AUTH = "Authentication failed"
ERR_NEED_USER = "Send USER first"
ERR_LOGIN_TIMEOUT = "Login timed out"
ERR_TOO_MANY_FAILURES = "Too many authentication failures"
ERR_TEMP = "Temporary problem, try again later"
ERR_NEED_TLS = "Plaintext authentication is disabled without TLS"
ERR_TLS_ACTIVE = "TLS is already active"
ERR_NO_STLS = "STLS is not available on this port"
ERR_MECHANISM = "Unsupported authentication mechanism"
ERR_CANCELLED = "Authentication cancelled"
ERR_LOGIN_DELAY = "Logged in too recently; wait longer between logins"
ERR_SASL_LONG = "SASL response too long"
OK_BEGIN_TLS = "Begin TLS negotiation"


class FrontState(enum.Enum):
    """Where the front is in a login, for what its channels may carry."""
    IDLE = "idle"                       # no client yet: the child's CLIENT
    AUTHENTICATING = "authenticating"   # a request is out: AUTH_OK or AUTH_FAIL
    OPENING = "opening"                 # granted: MAILBOX_READY or MAILBOX_ERR


class FrontSession(Session):
    state = State.AUTHORIZATION

    def __init__(self, sock, cfg, broker, child, tls_mode="none", peer_ip="?", deadline=None):
        super().__init__(sock, cfg.limits.max_bad_commands)
        # After a cleartext login, what the client pipelined past PASS goes
        # to the child in one HANDOVER frame.
        self.reader.max_buffer = limits.MAX_LEFTOVER
        self.broker = broker
        self.child = child
        self.tls_mode = tls_mode            # the listener's: none | starttls | implicit
        self.peer_ip = peer_ip
        self.plaintext_always = cfg.auth.plaintext == "always"
        self.implementation = cfg.implementation
        self.policies = policy_capabilities(cfg)
        self.login_deadline = (deadline if deadline is not None else
                               time.monotonic() + cfg.limits.login_deadline)
        self.tls = None                     # the SSLSocket once TLS is up
        self.user = None
        self.logged_in = False

    def deadline(self):
        return self.login_deadline

    def write_timeout(self):
        return max(0.0, self.login_deadline - time.monotonic())

    def on_timeout(self):
        self.err(ERR_LOGIN_TIMEOUT)

    def greet(self):
        self.ok(GREETING)

    # -- TLS -----------------------------------------------------------------
    def start_tls(self):
        """Handshake on the client socket (implicit TLS before the greeting,
        or after STLS's +OK); raises Closing if it fails or times out."""
        raw = self.sock
        try:
            ssock = tls.handshake(raw, self.login_deadline)
        except tls.HandshakeFailed as e:
            log.info("TLS handshake failed: rip=%s, reason=%s", self.peer_ip,
                     e.args[0])
            raise Closing("TLS handshake failed") from None
        self.tls = ssock
        self.sock = self.reader.sock = tls.TLSStream(ssock)
        log.info("TLS: rip=%s, %s", self.peer_ip, tls.describe(ssock))

    def plaintext_allowed(self):
        return self.plaintext_always or self.tls is not None

    def capabilities(self):
        """RFC 2449: exactly what this connection may use right now."""
        caps = list(SESSION_CAPABILITIES)
        if self.plaintext_allowed():
            caps += [b"USER", b"SASL " + " ".join(sasl.MECHANISMS).encode()]
        if self.tls_mode == "starttls" and self.tls is None:
            caps.append(b"STLS")
        caps += self.policies
        if self.implementation:
            caps.append(b"IMPLEMENTATION " + self.implementation.encode("ascii"))
        return caps

    def refuse(self, text, code=None):
        """An -ERR (with an RFC 3206 code) that spends the bad-command budget."""
        if self.bad_budget <= 0:
            self.bad(text)                  # the last of the budget: closes
        self.bad_budget -= 1
        self.err(text, code=code)

    # -- commands ------------------------------------------------------------
    def cmd_capa(self):
        self.ok("Capability list follows")
        self.multiline(self.capabilities())

    def cmd_quit(self):
        self.ok("Bye")
        raise Closing("quit")

    def cmd_stls(self):
        if self.tls is not None:
            self.refuse(ERR_TLS_ACTIVE)
            return
        if self.tls_mode != "starttls":
            self.refuse(ERR_NO_STLS)
            return
        self.ok(OK_BEGIN_TLS)
        self.flush()
        # RFC 2595 section 4 / CVE-2011-0411: whatever the client sent after
        # STLS and before the handshake was not protected by it; it is
        # dropped, never executed inside TLS.
        dropped = len(self.reader.take_buffered())
        if dropped:
            log.info("STLS: rip=%s, discarding %d bytes sent before the "
                     "handshake", self.peer_ip, dropped)
        self.user = None
        self.start_tls()

    def cmd_user(self, name):
        if not self.plaintext_allowed():
            self.refuse(ERR_NEED_TLS, code="AUTH")
            return
        # The name fits limits.MAX_LOGIN: parse() refuses an argument over
        # RFC 1939's 40 characters.  +OK whatever the name: whether it exists is only learnt from PASS,
        # and then only together with the right password.
        self.user = name
        self.ok()

    def cmd_pass(self, secret):
        user, self.user = self.user, None
        if not self.plaintext_allowed():
            self.refuse(ERR_NEED_TLS, code="AUTH")
            return
        if user is None:
            self.bad(ERR_NEED_USER)
            return
        # The secret fits limits.MAX_SECRET: it is the rest of a command
        # line of at most limits.MAX_COMMAND_LINE bytes.
        self.authenticate("", user, secret, "PASS")

    def cmd_auth(self, mechanism=None, initial=None):
        """RFC 5034.  No argument: list the mechanisms.  PLAIN with or
        without an initial response; a response line may be up to
        limits.MAX_SASL_LINE octets; "*" cancels."""
        self.user = None
        if not self.plaintext_allowed():
            self.refuse(ERR_NEED_TLS, code="AUTH")
            return
        if mechanism is None:
            self.ok("Mechanisms follow")
            self.multiline(m.encode() for m in sasl.MECHANISMS)
            return
        if mechanism.upper() not in sasl.MECHANISMS:
            self.refuse(ERR_MECHANISM)
            return
        if initial is None:
            self.out += b"+ \r\n"           # empty challenge: PLAIN is client-first
            self.flush()
            response = self.read_sasl_line()
            if response is None:
                return
        else:
            response = initial.encode("ascii")
        if response == sasl.CANCEL:
            self.err(ERR_CANCELLED)
            return
        try:
            creds = sasl.parse_plain(sasl.decode_response(response))
        except sasl.SaslError as e:
            code = "AUTH" if e.args[0] == sasl.ERR_AUTHZID else None
            self.refuse(e.args[0], code=code)
            return
        self.authenticate(creds.authzid, creds.authcid, creds.secret, "PLAIN")

    def read_sasl_line(self):
        """The client's continuation line, or None after answering -ERR."""
        try:
            line = self.reader.read_line(self.login_deadline,
                                         max_line=limits.MAX_SASL_LINE)
        except Timeout:
            self.err(ERR_LOGIN_TIMEOUT)
            raise Closing("login timeout") from None
        if line is OVERLONG:
            self.refuse(ERR_SASL_LONG)
            return None
        return line

    # -- the login exchange with the broker and the child ---------------------
    def authenticate(self, authzid, authcid, secret, method):
        try:
            try:
                ipc.send(self.broker, "AUTH_REQUEST", authzid=authzid,
                         authcid=authcid, secret=secret, method=method)
            except OSError as e:
                raise ipc.Closed(str(e)) from None
            answer = self._wait(self.broker, Channel.BROKER_FRONT,
                                FrontState.AUTHENTICATING)
        except ipc.Closed:
            # The broker closes a channel that spent its attempts.
            self.err(ERR_TOO_MANY_FAILURES, code="AUTH")
            raise Closing("auth attempts exhausted") from None
        if answer.name == "AUTH_FAIL":
            if answer.code == "LOGIN-DELAY":
                self.err(ERR_LOGIN_DELAY, code=answer.code)
                raise Closing("login delay")
            if answer.final:
                self.err(ERR_TOO_MANY_FAILURES, code=answer.code)
                raise Closing("auth attempts exhausted")
            self.err(ERR_AUTH, code=answer.code)
            return
        # AUTH_OK: the child is becoming the owner and opening the mailbox;
        # it may wait up to MAILBOX_LOCK_WAIT for an MDA's lock.
        self.login_deadline += limits.MAILBOX_LOCK_WAIT
        try:
            result = self._wait(self.child, Channel.CHILD_FRONT, FrontState.OPENING)
        except ipc.Closed:
            self.err(ERR_TEMP, code="SYS/TEMP")
            raise Closing("child ended before the mailbox was ready") from None
        if result.name == "MAILBOX_ERR":
            self.err(result.text, code=result.code)
            raise Closing("mailbox error")
        self.ok("Logged in")
        self.logged_in = True
        # Only once +OK is written may the broker count the success (a
        # grant for a client that never saw it must not exempt anyone).
        self.flush()
        try:
            ipc.send(self.broker, "LOGIN_DONE")
        except OSError:
            pass
        raise Closing("login")

    def _wait(self, sock, channel, state):
        """The one answer `state` expects on `channel`, by the deadline; a
        frame outside that state ends the login like a closed channel."""
        remaining = self.login_deadline - time.monotonic()
        ready, _, _ = select.select([sock], [], [], max(0.0, remaining))
        if not ready:
            self.err(ERR_LOGIN_TIMEOUT)
            raise Closing("login timeout")
        try:
            return ipc.recv(sock, channel, Role.FRONT, state)
        except ipc.Violation:
            raise ipc.Closed("protocol violation") from None

    def close(self):
        """End a connection that did not log in (TLS: close_notify first)."""
        if self.tls is not None:
            tls.close_notify(self.tls, linger=min(
                tls.CLOSE_LINGER, max(0.0, self.login_deadline - time.monotonic())))
            self.tls.close()
            return
        super().close()
