"""A pool slot's child: forks its front, waits for a grant, becomes the
mailbox owner, serves the TRANSACTION state, exits.

Runs in: the child process, forked as root by the spawner
(supervisor/spawner.py) when the supervisor asks for a slot.

Life of a child (states asserted as it goes):
  STARTING  fork the front while still root (chroot needs the privilege),
            then drop to `user` keeping only CAP_SETUID|CAP_SETGID in the
            permitted and bounding sets; report SLOT_READY.
  IDLE      wait for the supervisor's CONNECTION; pass the socket to the
            front without reading a byte of it.
  BUSY      wait for the broker's GRANT; log what the front sends.
  GRANTED   wait for the supervisor's STATE_DIR_READY (or SESSION_REFUSED:
            the maildrop is held by another session).
  OWNER     setgroups([]), setresgid/setresuid to the owner, capabilities
            cleared and checked; open the mailbox; tell the front.
  SESSION   take the socket (and any pipelined bytes) from the front and
            serve until QUIT, timeout or disconnect.
The child reads nothing from the client before it is the owner, and every
wait before that is bounded by the login deadline.
"""
import _signal
import enum
import os
import select
import socket
import time

from popd import config, ipc, limits, mailpath
from popd.ipc import Channel, Role
from popd.mail.maildrop import MailboxError, Maildrop
from popd.pop3.protocol import State
from popd.pop3.transaction import ChildSession
from popd.slot import front, lock_helper
from popd.unix import logsetup, privileges, process, proctitle
from popd.unix.logsetup import log

_SOCK_STREAM = int(socket.SOCK_STREAM)


def _stream_socket(fd):
    """A socket object for the front's HANDOVER fd if it is a stream
    socket (the client's, or the TLS pipe's end), else None, fd closed:
    the front is the less trusted side."""
    try:
        client = socket.socket(fileno=fd)            # ENOTSOCK for anything else
    except OSError:
        client = None
    if client is not None:
        if client.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == _SOCK_STREAM:
            return client
        client.detach()
    os.close(fd)
    return None


class ChildState(enum.Enum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    GRANTED = "granted"
    OWNER = "owner"
    SESSION = "session"


class Child:
    def __init__(self, cfg, slot, sup, broker):
        self.cfg = cfg
        self.slot = slot
        self.sup = sup
        self.broker = broker
        self.front = None
        self.front_pid = None
        self.state = ChildState.STARTING
        self.peer_ip = None
        self.front_log_budget = limits.MAX_FRONT_LOG_LINES
        self.lock_helper = None
        self.grant = None
        self.granted = False
        self.session = None
        self.kick_seen = False

    def expect(self, *states):
        assert self.state in states, f"child in state {self.state}"

    # -- STARTING ------------------------------------------------------------
    def start(self, front_broker):
        # Fronts that exit are reaped by the kernel; the supervisor follows
        # them through a pidfd.
        _signal.signal(_signal.SIGCHLD, _signal.SIG_IGN)
        ours, theirs = ipc.socketpair()
        pid = process.fork_role("front", front.run, self.cfg, theirs, front_broker)
        theirs.close()
        front_broker.close()
        self.front, self.front_pid = ours, pid
        cfg = self.cfg
        privileges.drop_to(cfg.user, cfg.group, keep=privileges.SETID_CAPS)
        ipc.send(self.sup, "SLOT_READY", front_pid=pid)
        self.state = ChildState.IDLE
        proctitle.set_title(proctitle.CHILD_IDLE)

    # -- IDLE ------------------------------------------------------------------
    def wait_for_connection(self):
        self.expect(ChildState.IDLE)
        ready, _, _ = select.select([self.sup, self.front], [], [])
        if self.front in ready:
            return False          # front died while idle: the slot is done
        msg = ipc.recv(self.sup, Channel.SUPERVISOR_CHILD, Role.CHILD, self.state)
        # This process serves one connection: every line it logs from now
        # on, its front's included, carries the connection's id.
        log.session = msg.session
        fd = msg.fds[0]
        try:
            ipc.send(self.front, "CLIENT", fds=[fd], peer_ip=msg.peer_ip,
                     peer_port=msg.peer_port, listener=msg.listener, tls=msg.tls,
                     session=msg.session)
        finally:
            os.close(fd)          # the child keeps no copy of the socket
        self.peer_ip = msg.peer_ip
        self.state = ChildState.BUSY
        proctitle.set_title(proctitle.CHILD_BUSY, peer=msg.peer_ip)
        return True

    # -- BUSY, GRANTED ---------------------------------------------------------
    def wait_for_grant(self):
        """Until both the grant and the state directory are there, or the
        front ends (failed login, QUIT, timeout): then None.  A maildrop
        the supervisor will not hand out is answered [IN-USE] here."""
        self.expect(ChildState.BUSY)
        deadline = (time.monotonic() + self.cfg.limits.login_deadline
                    + limits.FRONT_KILL_GRACE)
        while True:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self.sup, self.broker, self.front],
                                        [], [], max(0.0, remaining))
            if not ready:
                log.warning("child: no grant before the login deadline")
                return None
            if self.front in ready and self.read_front() is None:
                return None
            # The broker queued GRANT here before it told the supervisor,
            # so whenever the supervisor's answer is readable the grant is
            # too, and reading the broker first keeps that order.
            if self.broker in ready:
                self.answer_grant(ipc.recv(self.broker, Channel.BROKER_CHILD, Role.CHILD,
                                           self.state))
            if self.sup in ready:
                msg = ipc.recv(self.sup, Channel.SUPERVISOR_CHILD, Role.CHILD, self.state)
                if msg.name == "SESSION_REFUSED":
                    return self.answer_session_refused(msg)
                return self.answer_state_dir_ready(msg)

    def answer_grant(self, msg):
        # The broker expanded the template with the account's home or its
        # own userdb_mail (mailpath.py); here only the form is checked, and
        # the file is opened only if the granted uid owns it.
        if not mailpath.well_formed(msg.mbox):
            raise ipc.Violation("GRANT names a mailbox path that is not absolute "
                                "and normalised")
        self.grant = msg
        self.granted = True
        self.state = ChildState.GRANTED

    def answer_state_dir_ready(self, msg):
        if msg.uid != self.grant.uid:
            raise ipc.Violation("state directory for another uid")
        return self.grant

    def answer_session_refused(self, msg):
        ipc.send(self.front, "MAILBOX_ERR", code=msg.code,
                 text="Mailbox is in use by another session")
        return None

    def read_front(self):
        """One frame from the front: LOG is logged here, and any frame is
        returned; None when the channel ended or broke the vocabulary."""
        try:
            msg = ipc.recv(self.front, Channel.CHILD_FRONT, Role.CHILD, self.state)
        except ipc.Closed:
            return None
        except ipc.Violation as e:
            log.warning("child: bad frame from the front: %s", e)
            return None
        if msg.name == "LOG":
            self.answer_log(msg)
        return msg

    def answer_log(self, msg):
        if self.front_log_budget > 0:
            self.front_log_budget -= 1
            log.log(logsetup.level_number(msg.level), "front: %s",
                    logsetup.sanitize(msg.text, 900))

    # -- OWNER -----------------------------------------------------------------
    def become_owner(self, grant):
        mail = self.cfg.mail
        uids, gids = config.service_ids(self.cfg)
        if mail.dotlock_group is not None:
            # Started while we can still set ids: the helper alone holds the
            # group that may create <mbox>.lock in the spool (and that can
            # read every mailbox there), we never do.
            self.lock_helper = lock_helper.start_lock_helper(
                grant.mbox, grant.uid, mail.dotlock_group)
        privileges.become_owner(grant.uid, grant.gid, mail.first_valid_uid,
                                mail.first_valid_gid, uids, gids)
        privileges.limit_resources(limits.SESSION_FILES, self.cfg.limits.session_memory)
        self.state = ChildState.OWNER
        proctitle.set_title(proctitle.CHILD_SESSION, user=grant.login,
                            peer=self.peer_ip)

    # -- SESSION ---------------------------------------------------------------
    def take_client(self):
        """Wait for the front's HANDOVER: the socket and pipelined bytes."""
        deadline = time.monotonic() + limits.FRONT_KILL_GRACE
        while True:
            ready, _, _ = select.select([self.front], [], [],
                                        max(0.0, deadline - time.monotonic()))
            if not ready:
                return None
            msg = self.read_front()
            if msg is None:
                return None
            if msg.name == "HANDOVER":
                client = _stream_socket(msg.fds[0])
                if client is None:
                    log.error("child: the front handed over something that is not "
                              "a stream socket; ending the session")
                    return None
                self.state = ChildState.SESSION
                return client, msg.leftover, msg.tls

    def serve(self):
        if not self.wait_for_connection():
            return
        grant = self.wait_for_grant()
        if grant is None:
            return
        self.become_owner(grant)
        drop = Maildrop(grant.mbox, grant.uid, self.cfg.mail.state_dir, self.lock_helper,
                        self.cfg.mail.uidl_source, self.cfg.mail.expire_days)
        try:
            drop.open()
        except MailboxError as e:
            ipc.send(self.front, "MAILBOX_ERR", code=e.code, text=e.text)
            return
        ipc.send(self.front, "MAILBOX_READY")
        taken = self.take_client()
        if taken is None:
            return
        sock, leftover, tls = taken
        # From here on only the client and the mailbox matter: the channels
        # to the broker and the (exited) front are closed.
        self.broker.close()
        self.front.close()
        started = time.monotonic()
        user = logsetup.sanitize(grant.login, 64)
        log.info('session start: rip=%s, user="%s", tls=%s, messages=%d',
                 self.peer_ip, user, logsetup.sanitize(tls, 120), len(drop.index))
        session = ChildSession(sock, self.cfg, drop, leftover)
        self.session = session
        session.report = self.report_progress
        # A kick (`popd ctl kick`: the supervisor's SIGUSR1) ends the session
        # like a dropped connection, unless its QUIT update has begun.
        # _signal, not signal.signal(): its enum conversions touch (and so
        # copy) pages of the image every slot shares (process.py).
        try:
            _signal.signal(_signal.SIGUSR1, lambda signum, frame: self.kicked(session))
            ipc.send(self.sup, "SESSION_STARTED", tls=tls[:120])
            outcome = session.serve()
        except Kicked:
            outcome = "kicked"
        _signal.signal(_signal.SIGUSR1, _signal.SIG_IGN)
        session.close()
        drop.close()
        log.info('session end: rip=%s, user="%s", tls=%s, retrieved=%d, deleted=%d, '
                 'expired=%d, bytes=%d, duration=%.3f, reason=%s', self.peer_ip, user,
                 logsetup.sanitize(tls, 120), len(session.retrieved), session.removed,
                 session.expired, session.bytes_sent, time.monotonic() - started, outcome)


    def kicked(self, session):
        """SIGUSR1: end the session, once (a second kick, or one that
        arrives as serve() returns, must not escape the handler)."""
        if session.state is not State.UPDATE and not self.kick_seen:
            self.kick_seen = True
            raise Kicked()

    def report_progress(self, session):
        try:
            ipc.send(self.sup, "SESSION_PROGRESS", bytes_sent=session.bytes_sent,
                     retrieved=len(session.retrieved), deleted=len(session.deleted))
        except OSError:
            pass                # the supervisor is gone or busy: only a figure lost

    def final_counts(self):
        session = self.session
        if session is None:
            return {"bytes_sent": 0, "retrieved": 0, "deleted": 0}
        return {"bytes_sent": session.bytes_sent, "retrieved": len(session.retrieved),
                "deleted": session.removed + session.expired}


class Kicked(Exception):
    """The supervisor asked this session to end (SIGUSR1)."""


def run(cfg, slot, sup_sock, front_broker, child_broker):
    """Entry point in the freshly forked child (root).  Never returns."""
    code = 0
    try:
        process.after_fork(keep={sup_sock.fileno(), front_broker.fileno(),
                                 child_broker.fileno()})
        logsetup.setup(cfg.logging)
        proctitle.set_title(proctitle.CHILD_IDLE)
        child = Child(cfg, slot, sup_sock, child_broker)
        child.start(front_broker)
        try:
            child.serve()
        finally:
            if child.granted:
                # Whatever ended it has been logged: the supervisor need
                # not log this session's end for us.
                try:
                    ipc.send(sup_sock, "CHILD_DONE", **child.final_counts())
                except OSError:
                    pass
    except ipc.Closed as e:
        # A peer ended first (the broker after a failed login, the
        # supervisor at shutdown): nothing left to do.
        log.debug("child: channel closed: %s", e)
    except ipc.Violation as e:
        log.warning("child: protocol violation: %s", e)
        code = 1
    except privileges.PrivilegeError as e:
        log.error("child: %s", e)
        code = 1
    except BaseException:                       # noqa: B902 - last resort
        log.exception("child: internal error")
        code = 1
    os._exit(code)
