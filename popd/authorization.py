"""POP3 AUTHORIZATION state: the commands a client may send before login.

Runs in: the front (uid login_user, chrooted, no capabilities).

The front never decides whether a password is right: PASS becomes an
AUTH_REQUEST to the broker, and only the child (once it is the mailbox
owner and holds the mailbox) can make the front say +OK.  Until then every
wait is bounded by the login deadline that started at the greeting.
"""
import select
import time

from . import ipc, limits
from .ipc import Channel, Role
from .protocol import Closing, Session, State

CAPABILITIES = [b"USER", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]

GREETING = "POP3 server ready"
ERR_AUTH = "Authentication failed"
ERR_NEED_USER = "Send USER first"
ERR_LOGIN_TIMEOUT = "Login timed out"
ERR_TOO_MANY_FAILURES = "Too many authentication failures"
ERR_TEMP = "Temporary problem, try again later"


class FrontSession(Session):
    state = State.AUTHORIZATION

    def __init__(self, sock, cfg, broker, child):
        super().__init__(sock, cfg.limits.max_bad_commands)
        self.broker = broker
        self.child = child
        self.login_deadline = time.monotonic() + cfg.limits.login_deadline
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

    # -- commands ------------------------------------------------------------
    def cmd_capa(self):
        self.ok("Capability list follows")
        self.multiline(CAPABILITIES)

    def cmd_quit(self):
        self.ok("Bye")
        raise Closing("quit")

    def cmd_user(self, name):
        if len(name) > limits.MAX_LOGIN:
            self.bad(ERR_AUTH)
            return
        # +OK whatever the name: whether it exists is only learnt from PASS,
        # and then only together with the right password.
        self.user = name
        self.ok()

    def cmd_pass(self, secret):
        user, self.user = self.user, None
        if user is None:
            self.bad(ERR_NEED_USER)
            return
        if len(secret) > limits.MAX_SECRET:
            self.err(ERR_AUTH, code="AUTH")
            return
        self.authenticate("", user, secret, "PASS")

    # -- the login exchange with the broker and the child ---------------------
    def authenticate(self, authzid, authcid, secret, method):
        try:
            try:
                ipc.send(self.broker, "AUTH_REQUEST", authzid=authzid,
                         authcid=authcid, secret=secret, method=method)
            except OSError as e:
                raise ipc.Closed(str(e)) from None
            answer = self._wait(self.broker, Channel.BROKER_FRONT)
        except ipc.Closed:
            # The broker closes a channel that spent its attempts.
            self.err(ERR_TOO_MANY_FAILURES, code="AUTH")
            raise Closing("auth attempts exhausted") from None
        if answer.name == "AUTH_FAIL":
            if answer.final:
                self.err(ERR_TOO_MANY_FAILURES, code=answer.code)
                raise Closing("auth attempts exhausted")
            self.err(ERR_AUTH, code=answer.code)
            return
        # AUTH_OK: the child is becoming the owner and opening the mailbox;
        # it may wait up to MAILBOX_LOCK_WAIT for an MDA's lock.
        self.login_deadline += limits.MAILBOX_LOCK_WAIT
        try:
            result = self._wait(self.child, Channel.CHILD_FRONT)
        except ipc.Closed:
            self.err(ERR_TEMP, code="SYS/TEMP")
            raise Closing("child ended before the mailbox was ready") from None
        if result.name == "MAILBOX_ERR":
            self.err(result.text, code=result.code)
            raise Closing("mailbox error")
        self.ok("Logged in")
        self.logged_in = True
        raise Closing("login")

    def _wait(self, sock, channel):
        remaining = self.login_deadline - time.monotonic()
        ready, _, _ = select.select([sock], [], [], max(0.0, remaining))
        if not ready:
            self.err(ERR_LOGIN_TIMEOUT)
            raise Closing("login timeout")
        try:
            msg = ipc.recv(sock, channel, Role.FRONT)
        except ipc.Violation:
            raise ipc.Closed("protocol violation") from None
        expected = {"AUTH_OK", "AUTH_FAIL"} if sock is self.broker else {
            "MAILBOX_READY", "MAILBOX_ERR"}
        if msg.name not in expected:
            raise ipc.Closed(f"unexpected {msg.name}")
        return msg
