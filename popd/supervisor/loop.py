"""The supervisor: the root loop.  Binds, admits, spawns, reaps, stops.

Runs in: the supervisor (uid 0); with the spawner it forks, the only processes
that keep root (supervisor/__init__.py lists what runs as root).

It never reads a byte a client sent: it accepts, decides from the peer
address alone (admission.py), and passes the socket to an idle slot's
child with SCM_RIGHTS.  Behind a load balancer the peer address is the
one the balancer's PROXY header names, the only bytes root reads, from
trusted peers only (proxied.py, proxy_header.py).  Signal handlers only record the signal; the
wakeup fd only wakes the loop and its bytes are never interpreted (after
a fork any process could write to it).  Processes are followed through
pidfds, so a slot counts as taken until its child AND its front are gone;
fronts orphaned by their child are re-parented here (child subreaper) and
reaped by the same waitpid loop.  Slots are forked by the spawner
(spawner.py says why), on request, one SPAWN frame per slot.  Granted
sessions run as their mailbox owner and are not trusted to end: the
supervisor keeps one session per maildrop and kills a stopped or stalled
session child (sessions.py), logging its `session end` line for it.
"""
import collections
import gc
import ipaddress
import json
import os
import select
import selectors
import signal
import socket
import time
from typing import NamedTuple

from popd import ipc, limits
from popd.config import service_ids
from popd.ipc import Channel, Role
from popd.supervisor import (admission, control, listeners, reload, sessions, startup_checks,
                             stats, trusted_files)
from popd.supervisor.broker_link import BrokerLink, BrokerStartError
from popd.supervisor.exporter_link import ExporterLink
from popd.supervisor.pool import Pool, Slot, SlotState
from popd.supervisor.proxied import ProxyHeaders
from popd.supervisor.stats import Stats
from popd.supervisor.spawner import SpawnerError, SpawnerLink
from popd.supervisor.startup_checks import StartupError
from popd.unix import privileges, process, proctitle, seccomp, tls
from popd.unix.logsetup import log, sanitize


class Waiting(NamedTuple):
    """An admitted connection waiting for an idle slot."""
    conn: socket.socket
    ip: str
    port: int
    listen: object        # the listener it came in on (config's listen entry)
    key: str              # its admission key (addresses.address_key)
    since: float          # monotonic time it started waiting
    session: str          # its id in every process's log lines


class Supervisor:
    # Told once start-up is complete, and when a stop begins: the launcher's
    # status pipe or systemd's notify socket (daemonize.py).
    on_ready = on_stopping = None

    def __init__(self, cfg, sockets, metrics_sock=None):
        self.cfg = cfg
        self.sockets = sockets              # [(listen config, socket)]
        self.metrics_sock = metrics_sock    # metrics.listen's, bound for the exporter
        self.pool = Pool()
        self.admission = admission.Admission(cfg.limits.max_children,
                                             cfg.limits.max_per_ip)
        self.pending = collections.deque()  # Waiting connections, oldest first
        self.sel = selectors.DefaultSelector()
        self.signals = set()
        self.stopping = False
        self.stop_deadline = None
        self.broker = None                  # BrokerLink new slots use
        self.retired = []                   # brokers still serving old slots
        self.service_uids, self.service_gids = service_ids(cfg)
        self.draining = {}                  # slot id -> when its front is killed
        self.spawner = None                 # SpawnerLink: forks the slots
        self.spawn_due = None               # when missing spares are forked
        self.maildrops = sessions.Maildrops()  # who holds which mailbox
        self.stats = Stats()
        self.proxied = ProxyHeaders(self.sel, self.admit_and_dispatch, self.stats.refused)
        self.control = None                 # the control socket (control.py)
        self.exporter = None                # ExporterLink, with metrics.listen

    # -- start-up ------------------------------------------------------------
    def start(self):
        proctitle.set_title(proctitle.SUPERVISOR)
        privileges.set_child_subreaper()
        self.setup_signals()
        self.broker = self.start_broker(self.cfg)
        if self.metrics_sock is not None:   # forked before the TLS key is loaded
            self.exporter = ExporterLink(self.cfg, self.metrics_sock, self.sel,
                                         lambda: stats.metrics_text(self).encode())
            try:
                self.exporter.start()
            except OSError as e:
                self.start_failed(f"metrics exporter: cannot fork it: {e.strerror or e}")
        self.load_tls()
        # Everything allocated so far is shared copy-on-write with every
        # slot; freezing keeps the collector from touching (and so
        # copying) those pages in the children.
        gc.collect()
        gc.freeze()
        self.spawner = SpawnerLink.start(self.cfg)
        for listen, sock in self.sockets:
            self.sel.register(sock, selectors.EVENT_READ, (self.on_accept, listen))
        self.control = control.ControlServer(control.socket_path(self.cfg),
                                             self.cfg.control_group, self.sel,
                                             self.answer_control)
        try:
            self.control.open()
        except OSError as e:
            self.start_failed(f"control socket {self.control.path}: {e.strerror or e}")
        if self.cfg.mail.dotlock_group is None:
            log.info("mail.dotlock_group is not set: mailboxes are dot-locked "
                     "only where their owner may create <mbox>.lock; fcntl "
                     "locks (which MDAs take) are always used")
        log.info("ready: listening on %s; max_children=%d, spare_children=%d",
                 ", ".join(listeners.label(l) for l, _ in self.sockets),
                 self.cfg.limits.max_children, self.cfg.limits.spare_children)
        if self.on_ready:
            self.on_ready()

    def start_failed(self, problem):
        """Stop what start() has forked so far, and say why in one line."""
        if self.exporter is not None and self.exporter.pid is not None:
            self.exporter.stop()
        self.broker.stop()
        raise StartupError(problem) from None

    def load_tls(self):
        """Build the TLS context now: after the broker is forked (it never
        holds the key) and before any slot is (fronts inherit the context;
        chrooted and unprivileged, they could not read the key file)."""
        if all(listen.tls == "none" for listen, _ in self.sockets):
            if self.cfg.auth.plaintext == "tls-only":
                log.warning("auth.plaintext is tls-only but no listener "
                            "offers TLS: nobody can log in")
            return
        try:
            tls.install(tls.build_context(self.cfg.tls))
        except tls.TLSConfigError as e:
            self.start_failed(str(e))

    def setup_signals(self):
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.wakeup_r = r
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, lambda signum, frame: self.signals.add(signum))
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self.sel.register(r, selectors.EVENT_READ, (self.on_wakeup, None))

    def start_broker(self, cfg):
        try:
            link = BrokerLink.start(cfg)
        except BrokerStartError as e:
            raise StartupError(str(e)) from None
        self.sel.register(link.sock, selectors.EVENT_READ, (self.on_broker, link))
        self.sel.register(link.pidfd, selectors.EVENT_READ, (self.on_broker_exit, link))
        return link

    # -- the loop ------------------------------------------------------------
    def run(self):
        while not (self.stopping and not self.pool.slots):
            if not self.stopping:
                self.spawn_slots()
            dispatch(self.sel, self.next_timeout())
            self.handle_signals()
            self.enforce_deadlines()
            # Slots the spawner had not reaped when it exited (a reload, a
            # crash) are re-parented here as zombies, with no pidfd event
            # left to wake a reap: collect them every turn.
            self.reap()
        self.control.close()
        if self.exporter is not None:
            self.exporter.stop()
        self.spawner.wait()
        self.stop_brokers()
        # A front forked moments before the stop (its slot still starting)
        # is not followed by a pidfd yet; it was killed with its child and
        # comes here as an orphan.  Nothing popd started outlives it.
        deadline = time.monotonic() + limits.FRONT_KILL_GRACE
        while not self.reap() and time.monotonic() < deadline:
            time.sleep(0.02)
        log.info("stopped")
        return 0

    def next_timeout(self):
        waits = [1.0]
        now = time.monotonic()
        if self.pool.next_spawn > now:
            waits.append(self.pool.next_spawn - now)
        if self.spawn_due is not None:
            waits.append(self.spawn_due - now)
        if self.exporter is not None and self.exporter.restart_at is not None:
            waits.append(self.exporter.restart_at - now)
        return max(0.01, min(waits))

    def on_wakeup(self, _):
        try:
            while os.read(self.wakeup_r, 512):
                pass                  # only a wake-up: the bytes mean nothing
        except BlockingIOError:
            pass

    def handle_signals(self):
        signals, self.signals = self.signals, set()
        if signal.SIGCHLD in signals:
            self.reap()
        if signals & {signal.SIGTERM, signal.SIGINT} and not self.stopping:
            self.begin_stop()
        if signal.SIGHUP in signals and not self.stopping:
            self.reload()

    # -- SIGHUP ----------------------------------------------------------------
    def reload(self):
        reload.reload(self)

    def retire(self, link):
        """A broker that new slots no longer use; it stops when the last
        slot that has its channels is gone."""
        link.retired = True
        self.retired.append(link)
        if link.slots == 0 and not link.exited:
            self.sel.unregister(link.sock)
            link.sock.close()

    # -- admission and hand-over -----------------------------------------------
    def on_accept(self, listen):
        sock = dict((id(l), s) for l, s in self.sockets)[id(listen)]
        for _ in range(64):                    # bounded work per wake-up
            try:
                conn, addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:               # EMFILE and friends: log, go on
                log.error("accept on %s: %s", listeners.label(listen), e.strerror)
                break
            self.stats.connections += 1
            session = new_session_id()
            if listen.proxy:
                # The client's address comes from the balancer's header.
                self.proxied.expect(conn, addr[0], addr[1], listen,
                                    self.cfg.proxy_trusted_networks, session)
            else:
                self.admit(conn, addr[0], addr[1], listen, session)
        self.dispatch_pending()

    def admit(self, conn, ip, port, listen, session):
        """Count the client in (or refuse it) and queue it for a slot."""
        key = self.admission.admit(ip)
        if key is None or len(self.pending) >= limits.MAX_PENDING_CONNECTIONS:
            if key is not None:
                self.admission.release(key)
            reason = self.admission.refusal_reason(ip) if key is None else "limit"
            self.stats.refused[reason] += 1
            log.info("refused: rip=%s, reason=%s", ip, reason, session=session)
            admission.refuse(conn)
            return
        self.pending.append(Waiting(conn, ip, port, listen, key, time.monotonic(), session))

    def admit_and_dispatch(self, conn, ip, port, listen, session):
        self.admit(conn, ip, port, listen, session)
        self.dispatch_pending()

    def refuse_waiting(self, waiting, reason):
        self.stats.refused[reason] += 1
        admission.refuse(waiting.conn)
        self.admission.release(waiting.key)

    def dispatch_pending(self):
        while self.pending:
            slot = self.pool.take_idle()
            if slot is None:
                return
            waiting = self.pending.popleft()
            try:
                slot.broker.send("CHANNEL_BIND", slot=slot.id, peer_ip=waiting.ip,
                                 session=waiting.session)
                ipc.send(slot.sock, "CONNECTION", fds=[waiting.conn.fileno()],
                         peer_ip=waiting.ip, peer_port=waiting.port,
                         listener=listeners.label(waiting.listen), tls=waiting.listen.tls,
                         session=waiting.session)
            except OSError as e:
                log.warning("slot %d did not take a connection: %s", slot.id, e)
                self.kill_slot(slot)
                self.pending.appendleft(waiting._replace(since=time.monotonic()))
                continue
            waiting.conn.close()
            self.pool.mark_busy(slot, waiting.key, waiting.ip, waiting.session)
            slot.accepted, slot.listener_tls = waiting.since, waiting.listen.tls

    # -- slots -----------------------------------------------------------------
    def spawn_slots(self):
        now = time.monotonic()
        if not self.pool.may_spawn(now):
            return
        limits_ = self.cfg.limits
        ready = self.pool.count(SlotState.STARTING, SlotState.IDLE)
        wanted = min(limits_.spare_children + len(self.pending) - ready,
                     limits_.max_children - len(self.pool.slots), limits.SPAWN_BURST)
        if wanted <= 0:
            self.spawn_due = None
            return
        # The spawner forks a batch back to back, so the pages its loop
        # writes are copied once per batch rather than once per slot (each
        # such page would otherwise end up private to one slot).  Missing
        # spares are therefore replaced together, at most SPAWN_BATCH_DELAY
        # after the first goes missing -- and at once when a client waits
        # for a slot or fewer than half the spares are left.
        if not self.pending and 2 * ready >= limits_.spare_children:
            if self.spawn_due is None:
                self.spawn_due = now + limits.SPAWN_BATCH_DELAY
            if now < self.spawn_due and wanted < limits.SPAWN_BURST:
                return
        self.spawn_due = None
        self.spawn_batch(wanted)

    def spawn_batch(self, count):
        batch, socks = [], []
        for _ in range(count):
            sid = self.pool.new_id()
            front_broker_b, front_broker_f = ipc.socketpair()
            child_broker_b, child_broker_c = ipc.socketpair()
            sup_end, child_end = ipc.socketpair()
            try:
                self.broker.send("CHANNELS_NEW", slot=sid,
                                 fds=[front_broker_b.fileno(), child_broker_b.fileno()])
            finally:
                front_broker_b.close()
                child_broker_b.close()
            batch.append((sid, (child_end, front_broker_f, child_broker_c)))
            socks.append(sup_end)
        try:
            answers = self.spawner.spawn(batch)
        except SpawnerError as e:
            # The broker sees these slots' channels close and forgets them.
            for sup_end in socks:
                sup_end.close()
            self.pool.back_off()
            log.error("spawner failed (%s); starting a new one, next spawn in "
                      "%.1f s", e, self.pool.backoff)
            self.spawner.stop()
            self.spawner = SpawnerLink.start(self.cfg)
            return
        finally:
            for _, ends in batch:
                for end in ends:
                    end.close()
        for (sid, _), sup_end, (pid, pidfd) in zip(batch, socks, answers):
            slot = Slot(sid, pid, pidfd, sup_end, broker=self.broker)
            self.broker.slots += 1
            self.pool.add(slot)
            self.sel.register(sup_end, selectors.EVENT_READ, (self.on_slot, slot))
            self.sel.register(slot.pidfd, selectors.EVENT_READ, (self.on_child_exit, slot))

    def on_slot(self, slot):
        try:
            msg = ipc.recv(slot.sock, Channel.SUPERVISOR_CHILD, Role.SUPERVISOR,
                           slot.state)
        except (ipc.Closed, ipc.Violation) as e:
            self.sel.unregister(slot.sock)     # exit is seen through the pidfd
            if isinstance(e, ipc.Violation):
                log.warning("slot %d: %s; killing it", slot.id, e)
                self.kill_slot(slot)
            return
        self.SLOT_MESSAGES[msg.name](self, slot, msg)

    def answer_child_done(self, slot, msg):
        slot.done = True
        self.stats.session_done(msg)

    def answer_session_started(self, slot, msg):
        slot.tls = msg.tls
        self.stats.sessions += 1

    def answer_session_progress(self, slot, msg):
        slot.bytes_sent, slot.retrieved, slot.deleted = (msg.bytes_sent, msg.retrieved,
                                                         msg.deleted)

    def answer_slot_ready(self, slot, msg):
        if not self.adopt_front(slot, msg.front_pid):
            log.warning("slot %d: front pid %d is not its child", slot.id,
                        msg.front_pid)
            self.kill_slot(slot)
            return
        self.pool.mark_idle(slot)
        self.dispatch_pending()

    # What a child may send; ipc.MESSAGES declares the slot state each is
    # accepted in (SLOT_READY: starting; CHILD_DONE: busy) and that each
    # comes once, and recv() refuses the rest: the slot is killed.
    SLOT_MESSAGES = {"SLOT_READY": answer_slot_ready, "CHILD_DONE": answer_child_done,
                     "SESSION_STARTED": answer_session_started,
                     "SESSION_PROGRESS": answer_session_progress}

    def adopt_front(self, slot, pid):
        """Follow the front through a pidfd, after checking that the pid
        really is a child of this slot's child."""
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return False
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            ppid = None
        if ppid != slot.pid:
            os.close(pidfd)
            return False
        slot.front_pid, slot.front_pidfd = pid, pidfd
        self.sel.register(pidfd, selectors.EVENT_READ, (self.on_front_exit, slot))
        return True

    def on_child_exit(self, slot):
        self.sel.unregister(slot.pidfd)
        os.close(slot.pidfd)
        slot.pidfd = None
        if slot.state is SlotState.BUSY:
            self.drain_slot(slot)
        unused = slot.state in (SlotState.STARTING, SlotState.IDLE)
        self.pool.child_exited(slot)
        if slot.granted:
            self.session_over(slot)
        if unused and not self.stopping and not slot.retiring:
            log.warning("slot %d (pid %d) exited before serving a client; next "
                        "spawn in %.1f s", slot.id, slot.pid, self.pool.backoff)
        self.reap()
        if slot.granted and slot.front_pidfd is not None:
            # A TLS front is still piping the child's last bytes (the QUIT
            # answer) to the client and sends close_notify; it gets as long
            # as the child would have had to write them, not forever.
            self.draining[slot.id] = (time.monotonic() + self.cfg.limits.idle_timeout
                                      + limits.FRONT_KILL_GRACE)
        else:
            # The slot is over: its front must not outlive it.
            process.send_signal(slot.front_pidfd, signal.SIGKILL)
        self.maybe_forget(slot)

    def on_front_exit(self, slot):
        self.sel.unregister(slot.front_pidfd)
        os.close(slot.front_pidfd)
        slot.front_pidfd = None
        self.reap()
        self.maybe_forget(slot)

    def maybe_forget(self, slot):
        if not slot.gone:
            return
        try:
            self.sel.unregister(slot.sock)
        except (KeyError, ValueError):
            pass
        slot.sock.close()
        if slot.admission_key is not None:
            self.admission.release(slot.admission_key)
        self.pool.remove(slot)
        link = slot.broker
        link.slots -= 1
        if link.retired and link.slots == 0 and not link.exited:
            self.sel.unregister(link.sock)
            link.sock.close()              # it exits; on_broker_exit reaps it

    def kill_slot(self, slot, why=None, reason="other"):
        """SIGKILL the slot's child and front; `why`, for a granted slot,
        becomes its session's end (session_over logs it), counted once
        under `reason` (stats.KILLS)."""
        if why and slot.granted and slot.pidfd is not None and slot.killed is None:
            slot.killed = why
            self.stats.killed[reason] += 1
            log.warning('slot %d: session of user="%s" (rip=%s) %s; killing it',
                        slot.id, slot.login, slot.peer, why, session=slot.session)
        process.send_signal(slot.pidfd, signal.SIGKILL)
        process.send_signal(slot.front_pidfd, signal.SIGKILL)

    def session_over(self, slot):
        """A granted child is gone: its maildrop is free (a grant waiting
        for it goes on), and a session whose child did not log its own end
        (killed, by us or by a signal) gets its end line here."""
        if not slot.done:
            log.info('session end: rip=%s, user="%s", duration=%.3f, reason=%s',
                     slot.peer, slot.login, time.monotonic() - slot.busy_since,
                     "killed" if slot.killed else "died", session=slot.session)
        if self.cfg.limits.login_delay and not self.broker.exited:
            # LOGIN-DELAY counts from here, in the broker that decides logins.
            try:
                self.broker.send("SESSION_ENDED", login=slot.granted_login)
            except OSError:
                pass                           # a gone broker stops us anyway
        waiter = self.maildrops.release(slot.id)
        if waiter is not None:
            self.session_may_start(self.pool.slots.get(waiter))

    def drain_slot(self, slot):
        """Frames the child sent before it exited (CHILD_DONE) may still
        be queued when its pidfd fires: read them first."""
        for _ in range(4):                     # the child sends one frame
            try:
                self.sel.get_key(slot.sock)
            except (KeyError, ValueError):
                return                         # its channel already ended
            if not select.select([slot.sock], [], [], 0)[0]:
                return
            self.on_slot(slot)

    def reap(self):
        """Collect every exited process: orphaned fronts, slots of a gone
        spawner, the spawner, the broker.  True once none is left."""
        return process.reap_children()

    # -- grants ----------------------------------------------------------------
    def on_broker(self, link):
        try:
            msg = ipc.recv(link.sock, Channel.SUPERVISOR_BROKER, Role.SUPERVISOR,
                           link.state)
        except (ipc.Closed, ipc.Violation) as e:
            log.error("auth broker channel: %s", e)
            self.sel.unregister(link.sock)
            return
        self.BROKER_MESSAGES[msg.name](self, link, msg)

    def answer_broker_stats(self, link, msg):
        link.counts = dict(msg.fields)

    def answer_granted(self, link, msg):
        slot = self.pool.slots.get(msg.slot)
        if (slot is None or slot.broker is not link or slot.state is not SlotState.BUSY
                or slot.granted):
            log.warning("unexpected %s from the broker", msg.name)
            return
        slot.granted = True
        self.stats.login(time.monotonic() - slot.accepted)
        slot.login = sanitize(msg.login, 64)
        slot.granted_login = msg.login
        slot.uid = msg.uid
        slot.watch = sessions.Watch(time.monotonic())
        mail = self.cfg.mail
        if (msg.uid < mail.first_valid_uid or msg.gid < mail.first_valid_gid
                or msg.uid in self.service_uids or msg.gid in self.service_gids):
            log.error("broker granted uid %d gid %d: refused", msg.uid, msg.gid)
            self.kill_slot(slot, "was granted a forbidden uid")
            return
        problem = trusted_files.user_state_directory(mail.state_dir, msg.uid, msg.gid)
        if problem:
            log.error("state directory: %s", problem)
            self.kill_slot(slot, "has no usable state directory")
            return
        # One session per maildrop, kept here and not by a lock file in
        # the owner's state directory, which the owner could delete.
        claim = self.maildrops.claim(
            slot.id, msg.mbox, msg.uid, self.cfg.limits.max_sessions_per_uid,
            alive=lambda sid: getattr(self.pool.slots.get(sid), "pidfd", None) is not None)
        if claim == "ok":
            self.session_may_start(slot)
        elif claim == "refuse":
            self.refuse_session(slot)

    def session_may_start(self, slot):
        if slot is None or slot.pidfd is None:
            return
        try:
            ipc.send(slot.sock, "STATE_DIR_READY", uid=slot.uid)
        except OSError:
            self.kill_slot(slot, "did not take its state directory")

    def refuse_session(self, slot):
        if slot is None or slot.pidfd is None:
            return
        log.info('login refused: rip=%s, user="%s": the mailbox is in use by '
                 'another session', slot.peer, slot.login, session=slot.session)
        try:
            ipc.send(slot.sock, "SESSION_REFUSED", code="IN-USE")
        except OSError:
            self.kill_slot(slot, "did not take its refusal")

    # What a ready broker sends (ipc.MESSAGES: states "ready").
    BROKER_MESSAGES = {"GRANTED": answer_granted, "BROKER_STATS": answer_broker_stats}

    def on_broker_exit(self, link):
        self.sel.unregister(link.pidfd)
        if link.sock.fileno() >= 0 and link.sock in self.sel.get_map():
            self.sel.unregister(link.sock)     # on_broker may have, at end of channel
        link.exited = True
        self.stats.broker_exited(link)
        self.reap()
        if link is not self.broker:
            self.retired.remove(link)      # a retired broker finished
            return
        if self.stopping:
            return
        log.error("the auth broker exited; stopping (no login could succeed)")
        self.exit_code = 1
        self.begin_stop()

    # -- popd ctl ----------------------------------------------------------------
    def answer_control(self, request):
        """The answer to one control request (control.py's vocabulary)."""
        if request[0] == "metrics":
            return stats.metrics_text(self).encode()
        if request[0] == "kick":
            result = self.kick(request[1], request[2])
        else:
            result = {"status": stats.status, "who": stats.who,
                      "stats": stats.counters}[request[0]](self)
        return (json.dumps(result, indent=1) + "\n").encode()

    def kick(self, kind, value):
        """End the matching sessions as if their connections dropped: the
        child's SIGUSR1 handler gives up without an update (unless its
        QUIT's update has begun) and logs reason=kicked."""
        kicked = []
        for slot in self.pool.slots.values():
            if slot.tls is None or slot.pidfd is None or slot.done:
                continue                    # not (or no longer) in a session
            if ((kind == "user" and slot.granted_login == value)
                    or (kind == "address" and str(ipaddress.ip_address(slot.peer)) == value)
                    or (kind == "pid" and slot.pid == value)):
                process.send_signal(slot.pidfd, signal.SIGUSR1)
                kicked.append({"session": slot.session, "pid": slot.pid,
                               "user": slot.login, "address": slot.peer})
        log.info("kick %s %s: %d session(s)", kind, sanitize(str(value), 64), len(kicked))
        return {"kicked": kicked}

    # -- deadlines and stopping ----------------------------------------------------
    def enforce_deadlines(self):
        now = time.monotonic()
        self.proxied.expire(now)
        self.control.expire(now)
        if self.exporter is not None and not self.stopping:
            self.exporter.tick(now)
        # Until the grant only the front is at work, and it must end its
        # client at the login deadline; a front that does not is killed a
        # little later.  After the grant the child bounds the rest.
        login_limit = self.cfg.limits.login_deadline + limits.FRONT_KILL_GRACE
        for slot in list(self.pool.slots.values()):
            if slot.state is SlotState.STARTING and now - slot.started > limits.SLOT_START_TIMEOUT:
                log.warning("slot %d did not start in time; killing it", slot.id)
                self.kill_slot(slot)
            elif (slot.state is SlotState.BUSY and not slot.granted
                  and now - slot.busy_since > login_limit):
                log.warning("slot %d: login deadline passed (rip=%s); killing "
                            "the front and the child", slot.id, slot.peer,
                            session=slot.session)
                self.stats.killed["login-deadline"] += 1
                self.kill_slot(slot)
            elif slot.granted and slot.pidfd is not None and slot.killed is None:
                why = sessions.stall_reason(slot.pid, slot.watch, now,
                                            self.cfg.limits.idle_timeout)
                if why:
                    self.kill_slot(slot, why,
                                   "stopped" if why.startswith("stopped") else "stalled")
        for sid in self.maildrops.expired_waits(now):
            self.refuse_session(self.pool.slots.get(sid))
        for sid, until in list(self.draining.items()):
            slot = self.pool.slots.get(sid)
            if slot is None or slot.front_pidfd is None:
                del self.draining[sid]
            elif now > until:
                log.warning("slot %d: front still piping after its child "
                            "ended; killing it", slot.id)
                process.send_signal(slot.front_pidfd, signal.SIGKILL)
                del self.draining[sid]
        while self.pending and now - self.pending[0].since > self.cfg.limits.login_deadline:
            self.refuse_waiting(self.pending.popleft(), "limit")
        if self.stopping and now >= self.stop_deadline:
            for slot in self.pool.slots.values():
                self.kill_slot(slot, "outlived the shutdown grace", "shutdown-grace")

    def begin_stop(self):
        self.stopping = True
        if self.on_stopping:
            self.on_stopping()
        self.stop_deadline = time.monotonic() + self.cfg.limits.shutdown_grace
        busy = self.pool.count(SlotState.BUSY)
        log.info("stopping: %d session(s) may finish within %d s", busy,
                 self.cfg.limits.shutdown_grace)
        for listen, sock in self.sockets:
            self.sel.unregister(sock)
            sock.close()
        self.sockets = []
        self.proxied.close_all()
        while self.pending:
            self.refuse_waiting(self.pending.popleft(), "shutdown")
        for slot in self.pool.slots.values():
            if slot.state in (SlotState.STARTING, SlotState.IDLE):
                self.kill_slot(slot)

    def stop_brokers(self):
        for link in [self.broker] + self.retired:
            if not link.exited:
                link.stop()

def new_session_id():
    """Eight hex digits, random: unique enough to follow one connection
    through one day's log, and telling nothing about the others.  (Not
    the secrets module: it imports random, which test_image.py keeps out
    of the image every slot is forked from.)"""
    return os.urandom(4).hex()


def dispatch(sel, timeout):
    """One select() turn: call each ready key's (callback, arg).  A key an
    earlier callback of the same turn unregistered is skipped: a child's
    exit (its pidfd) and its last frame (its socket) often arrive in one
    turn, and the exit closes the socket; reading it then would take the
    supervisor down."""
    for key, _ in sel.select(timeout):
        if sel.get_map().get(key.fd) is not key:
            continue
        callback, arg = key.data
        callback(arg)


def serve(cfg, on_ready=None, on_stopping=None):
    """Prepare the directories, bind, run; returns the exit code."""
    problems = startup_checks.problems(cfg)
    if problems:
        raise StartupError("\n".join(problems))
    warning = trusted_files.suid_dumpable_warning()
    if warning:
        log.warning("%s", warning)
    # The fronts' seccomp filter (popd/unix/seccomp.py) is compiled here, once,
    # before anything is forked; fronts only install it.  Without
    # libseccomp.so.2 or kernel support: said once here, fatal only if
    # required.
    problem = seccomp.startup_problem(cfg.login_seccomp)
    if problem and cfg.login_seccomp == "required":
        raise StartupError(problem) from None
    if problem:
        log.warning("%s", problem)
    sockets = []
    try:
        for listen in cfg.listen:
            sockets.append((listen, listeners.bind(listen)))
    except listeners.BindError as e:
        for _, s in sockets:
            s.close()
        raise StartupError(str(e)) from None
    metrics_sock = None
    if cfg.metrics.listen is not None:
        try:
            metrics_sock = listeners.bind(cfg.metrics.listen)
        except listeners.BindError as e:
            for _, s in sockets:
                s.close()
            raise StartupError(f"metrics.listen: {e}") from None
    sup = Supervisor(cfg, sockets, metrics_sock)
    sup.exit_code = 0
    sup.on_ready, sup.on_stopping = on_ready, on_stopping
    sup.start()
    sup.run()
    return sup.exit_code

