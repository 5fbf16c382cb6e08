"""The auth broker: the only process that reads password hashes.

Runs in: the broker process (uid broker_user, no capabilities, no network
socket), forked by the supervisor before the TLS key is loaded.

For each pool slot it holds two channels the supervisor handed it: one to
the slot's front (requests come in, one answer goes out per request) and
one to the slot's child (the grant goes out, nothing comes in).  A front
channel is UNBOUND until the supervisor names the client address it serves
(CHANNEL_BIND), BOUND while it may ask, GRANTED after a success; any frame
that does not fit that state closes the slot's channels with a log line.
The client address used for logs (and, later, throttling) comes from the
supervisor, never from the front.
"""
import enum
import os
import selectors
import socket
from collections import Counter

from . import config, ipc, limits, logsetup, passwd, privileges, process, proctitle
from .ipc import Channel, Role
from .logsetup import log, sanitize


class ChannelState(enum.Enum):
    UNBOUND = "unbound"
    BOUND = "bound"
    GRANTED = "granted"


class SlotChannels:
    def __init__(self, slot, front, child):
        self.slot = slot
        self.front = front
        self.child = child
        self.state = ChannelState.UNBOUND
        self.peer_ip = None
        self.attempts = 0


class PasswdSource:
    """The passwd file, re-read when it changes (so an edit or a HUP-time
    rewrite takes effect without a restart).  A broken new version is
    logged and the previous one keeps serving."""

    def __init__(self, path):
        self.path = path
        self.stamp = None
        self.entries = {}

    def refresh(self):
        try:
            st = os.stat(self.path)
        except OSError as e:
            log.error("cannot stat %s as uid %d: %s", self.path, os.getuid(),
                      e.strerror)
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self.stamp:
            return
        try:
            self.entries = passwd.load_passwd_file(self.path)
        except (passwd.PasswdError, OSError) as e:
            log.error("keeping the previous passwd data: %s", e)
            return
        self.stamp = stamp
        return True

    def default_scheme(self):
        """The commonest scheme in the file: unknown users are verified
        against a dummy hash of it, so they cost what a wrong password
        costs."""
        schemes = Counter(passwd.scheme_of(e.password)
                          for e in self.entries.values())
        # max() rather than most_common(): that one imports heapq lazily,
        # and after the privilege drop imports may fail.
        return max(schemes, key=schemes.__getitem__) if schemes else "SHA512-CRYPT"


class Broker:
    def __init__(self, cfg, sup):
        self.cfg = cfg
        self.sup = sup
        self.slots = {}
        self.sel = selectors.DefaultSelector()
        self.sel.register(sup, selectors.EVENT_READ, None)
        self.passwd = PasswdSource(cfg.auth.passwd_file)
        self.verifier = passwd.Verifier(default_scheme="SHA512-CRYPT")
        self.service_uids, self.service_gids = config.service_ids(cfg)

    def run(self):
        while True:
            events = self.sel.select()
            # The control channel first: a CHANNEL_BIND always precedes the
            # front's first request, and must be seen before it.
            events.sort(key=lambda e: e[0].data is not None)
            for key, _ in events:
                if key.data is None:
                    self.from_supervisor()
                elif key.data[1] == "front":
                    self.from_front(key.data[0])
                else:
                    self.close_slot(key.data[0], None)   # the slot ended

    # -- supervisor ----------------------------------------------------------
    def from_supervisor(self):
        try:
            msg = ipc.recv(self.sup, Channel.SUPERVISOR_BROKER, Role.BROKER)
        except ipc.Closed:
            raise SystemExit(0)           # the supervisor is gone: so are we
        except ipc.Violation as e:
            log.error("broker: bad frame from the supervisor: %s", e)
            raise SystemExit(1)
        if msg.name == "CHANNELS_NEW":
            front, child = (socket.socket(fileno=fd) for fd in msg.fds)
            if msg.slot in self.slots:
                self.close_slot(self.slots[msg.slot], "slot id reused")
            chan = SlotChannels(msg.slot, front, child)
            self.slots[msg.slot] = chan
            self.sel.register(front, selectors.EVENT_READ, (chan, "front"))
            self.sel.register(child, selectors.EVENT_READ, (chan, "child"))
        elif msg.name == "CHANNEL_BIND":
            chan = self.slots.get(msg.slot)
            if chan is None or chan.state is not ChannelState.UNBOUND:
                log.warning("broker: CHANNEL_BIND for slot %d in state %s",
                            msg.slot, chan.state.value if chan else "none")
                return
            chan.peer_ip = msg.peer_ip
            chan.state = ChannelState.BOUND

    def drain_supervisor(self):
        """Read whatever the supervisor has already sent, without waiting."""
        while True:
            self.sup.setblocking(False)
            try:
                self.from_supervisor()
            except BlockingIOError:
                return
            finally:
                self.sup.setblocking(True)

    # -- fronts --------------------------------------------------------------
    def from_front(self, chan):
        if chan.front is None:            # closed earlier in this loop turn
            return
        try:
            msg = ipc.recv(chan.front, Channel.BROKER_FRONT, Role.BROKER)
        except ipc.Closed:
            self.close_slot(chan, None)
            return
        except ipc.Violation as e:
            self.close_slot(chan, f"bad frame: {e}")
            return
        if chan.state is ChannelState.UNBOUND:
            self.drain_supervisor()
        if chan.state is not ChannelState.BOUND:
            self.close_slot(chan, f"{msg.name} in state {chan.state.value}")
            return
        if chan.attempts >= limits.MAX_AUTH_ATTEMPTS_PER_CONNECTION:
            self.close_slot(chan, "too many attempts")
            return
        chan.attempts += 1
        self.answer_auth_request(chan, msg)

    def refresh_passwd(self):
        """Re-read a changed passwd file; dummy hashes then follow the
        schemes and costs it uses, so unknown users cost what known ones
        do."""
        if self.passwd.refresh():
            self.verifier.warm_up(self.passwd.entries.values())
            self.verifier.default_scheme = self.passwd.default_scheme()

    def answer_auth_request(self, chan, msg):
        self.refresh_passwd()
        login = msg.authcid
        well_formed = passwd.valid_login(login) and msg.authzid in ("", login)
        entry = self.passwd.entries.get(login) if well_formed else None
        # Always one verify, against a dummy hash when there is no entry:
        # unknown users cost the same time as wrong passwords.
        good = self.verifier.verify(entry, msg.secret) and entry is not None
        if not good:
            reason = ("password-mismatch" if entry else
                      "unknown-user" if well_formed else "bad-name")
            log.warning('auth failed: rip=%s, method=%s, attempt=%d, '
                        'reason=%s, user="%s"', chan.peer_ip, msg.method,
                        chan.attempts, reason, sanitize(login, 64))
            final = chan.attempts >= limits.MAX_AUTH_ATTEMPTS_PER_CONNECTION
            self.send_front(chan, "AUTH_FAIL", code="AUTH", final=int(final))
            if final:
                self.close_front(chan)
            return
        problem = self.grant_problem(entry)
        mbox = config.mbox_path(self.cfg.mail.mbox, login)
        if problem or mbox is None:
            log.error('refusing login for user="%s": %s', sanitize(login, 64),
                      problem or "mailbox path leaves the template directory")
            self.send_front(chan, "AUTH_FAIL", code="SYS/PERM", final=1)
            self.close_front(chan)
            return
        try:
            ipc.send(chan.child, "GRANT", login=login, uid=entry.uid,
                     gid=entry.gid, mbox=mbox)
            ipc.send(self.sup, "GRANTED", slot=chan.slot, uid=entry.uid,
                     gid=entry.gid)
        except OSError as e:
            self.close_slot(chan, f"cannot send the grant: {e}")
            return
        chan.state = ChannelState.GRANTED
        log.info('login: rip=%s, method=%s, user="%s", uid=%d',
                 chan.peer_ip, msg.method, sanitize(login, 64), entry.uid)
        self.send_front(chan, "AUTH_OK")

    def grant_problem(self, entry):
        """Why this account must never be served, or None."""
        mail = self.cfg.mail
        if entry.uid == 0 or entry.uid < mail.first_valid_uid:
            return f"uid {entry.uid} is below mail.first_valid_uid " \
                   f"({mail.first_valid_uid}) or root"
        if entry.gid == 0 or entry.gid < mail.first_valid_gid:
            return f"gid {entry.gid} is below mail.first_valid_gid " \
                   f"({mail.first_valid_gid}) or root"
        if entry.uid in self.service_uids or entry.gid in self.service_gids:
            return f"uid {entry.uid} / gid {entry.gid} belongs to a popd " \
                   f"service user"
        return None

    def send_front(self, chan, name, **fields):
        if chan.front is None:
            return
        try:
            ipc.send(chan.front, name, **fields)
        except OSError as e:
            self.close_slot(chan, f"cannot answer the front: {e}")

    def close_front(self, chan):
        """Stop listening to this front for good; the child channel stays
        until the slot ends, so the front can still answer its client."""
        if chan.front is not None:
            self.sel.unregister(chan.front)
            chan.front.close()
            chan.front = None

    def close_slot(self, chan, reason):
        if reason:
            log.warning("broker: closing the channels of slot %d (%s, "
                        "rip=%s): %s", chan.slot, chan.state.value,
                        chan.peer_ip, reason)
        self.close_front(chan)
        for sock in (chan.child,):
            try:
                self.sel.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()
        if self.slots.get(chan.slot) is chan:
            del self.slots[chan.slot]


def run(cfg, sup_sock):
    """Entry point in the freshly forked broker (still root)."""
    process.after_fork(keep={sup_sock.fileno()})
    logsetup.setup(cfg.logging)
    proctitle.set_title(proctitle.BROKER)
    broker = Broker(cfg, sup_sock)
    # Every hashing backend is loaded now: after the drop the interpreter
    # may not be able to import anything (it can live in a 0700 directory).
    broker.verifier.warm_up()
    privileges.drop_to(cfg.broker_user, cfg.broker_group)
    broker.refresh_passwd()
    if broker.passwd.stamp is None:
        log.error("auth broker: cannot use %s as uid %d; make it readable by "
                  "broker_group (chgrp %d %s; chmod 0640 %s)",
                  cfg.auth.passwd_file, cfg.broker_user, cfg.broker_group,
                  cfg.auth.passwd_file, cfg.auth.passwd_file)
        raise SystemExit(1)
    ipc.send(sup_sock, "BROKER_READY")
    broker.run()
