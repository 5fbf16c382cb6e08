"""The auth broker: the only process that reads password hashes.

Runs in: the broker process (uid broker_user, no capabilities, no network
socket), forked by the supervisor before the TLS key is loaded, and its
hashing workers (same uid), forked before the broker drops privileges.

For each pool slot it holds two channels the supervisor handed it: one to
the slot's front (requests come in, one answer goes out per request) and
one to the slot's child (the grant goes out, nothing comes in).  A front
channel is UNBOUND until the supervisor names the client address it serves
(CHANNEL_BIND), BOUND while it may ask, WAITING while its request is being
checked, GRANTED after a success, DONE once the front says its client
was told +OK (LOGIN_DONE: only then is the success recorded); a frame
that does not fit the state closes the slot's channels with a log line.
The client address used for throttling and logs comes from the
supervisor, never from the front.

Accounts come from the backends of `auth.backend` (accounts.py); a
known account that may not log in (locked, expired, nologin...) costs a
full verification and is answered like a wrong password.

Hashing (100-300 ms for argon2 or bcrypt; the PAM stack for the pam
backend) runs in worker processes fed by a queue that is fair per client
address, so twenty guessers cannot push a real user to the back; the
answer then waits out the throttle's delay on a timer heap (throttle.py),
never in a sleep.
"""
import collections
import enum
import heapq
import os
import select
import selectors
import signal
import socket
import time

from popd import addresses, ipc, limits, mailpath
from popd.broker import accounts, pam_auth, passwd, throttle
from popd.config import service_ids
from popd.ipc import Channel, Role
from popd.unix import logsetup, privileges, process, proctitle
from popd.unix.logsetup import log, sanitize


class ChannelState(enum.Enum):
    UNBOUND = "unbound"
    BOUND = "bound"
    WAITING = "waiting"
    GRANTED = "granted"
    DONE = "done"


class SlotChannels:
    def __init__(self, slot, front, child):
        self.slot = slot
        self.front = front
        self.child = child
        self.state = ChannelState.UNBOUND
        self.peer_ip = None
        self.session = None            # the connection's id, for log lines
        self.address = None            # throttling key: IPv4, or IPv6 /64
        self.failures = 0
        self.closed = False
        self.login = None              # the login granted on this channel


class Job:
    """One AUTH_REQUEST on its way through the queue and a worker."""

    def __init__(self, chan, msg, entry, well_formed, delay, refusal):
        self.chan = chan
        self.login = msg.authcid
        self.method = msg.method
        self.secret = msg.secret
        self.entry = entry
        self.well_formed = well_formed
        self.refusal = refusal             # why a right password is still refused
        # A refused account with no hash to check (locked, expired in
        # /etc/shadow) is refused whatever the password; it still costs a
        # dummy verification.
        self.refused = bool(refusal and entry is not None and not entry.password
                            and entry.source != "pam")
        self.arrived = time.monotonic()
        self.queued = 0.0                  # seconds spent waiting for a worker
        self.due = self.arrived + delay


class FairQueue:
    """Per-address FIFOs served round-robin, bounded in total and per
    address, so one address can neither starve others nor grow memory.
    Addresses with recent failures wait in a second tier that is served
    only when no clean address is waiting: a guesser's backlog never sits
    in front of someone who has not been failing."""

    def __init__(self, total, per_address):
        self.total, self.per_address = total, per_address
        self.tiers = (collections.OrderedDict(), collections.OrderedDict())
        self.size = 0

    def push(self, key, job, suspect=False):
        tier = self.tiers[bool(suspect)]
        q = tier.get(key) or self.tiers[not suspect].get(key)
        if self.size >= self.total or (q is not None and len(q) >= self.per_address):
            return False
        if q is None:
            q = tier[key] = collections.deque()
        q.append(job)
        self.size += 1
        return True

    def pop(self):
        for tier in self.tiers:
            if tier:
                key, q = tier.popitem(last=False)
                job = q.popleft()
                if q:
                    tier[key] = q          # to the back of the round
                self.size -= 1
                return job
        return None


def broker_groups(cfg):
    """The broker's supplementary groups: the shadow group for the system
    and pam backends, nothing otherwise."""
    return () if cfg.auth.shadow_group is None else (cfg.auth.shadow_group,)


def worker_main(cfg, sock, verifier):
    """A hashing worker: VERIFY in, VERIFIED out, nothing else."""
    process.after_fork(keep={sock.fileno()})
    logsetup.setup(cfg.logging)
    proctitle.set_title(proctitle.BROKER_WORKER)
    if os.geteuid() == 0:
        privileges.drop_to(cfg.broker_user, cfg.broker_group, groups=broker_groups(cfg))
    privileges.limit_memory(cfg.limits.broker_memory)
    # After the drop: a credential change clears the parent-death signal.
    privileges.die_with_parent(signal.SIGKILL)
    if os.getppid() == 1:
        return                             # the broker is already gone
    while True:
        try:
            msg = ipc.recv(sock, Channel.BROKER_WORKER, Role.WORKER)
        except (ipc.Closed, ipc.Violation):
            return
        if msg.name == "VERIFY_PAM":
            ipc.send(sock, "VERIFIED", job=msg.job,
                     ok=pam_auth.check(cfg.auth.pam_service, msg.login, msg.secret))
            continue
        # The broker sends only hashes it loaded, weak ones only where
        # auth.allow_weak_schemes let them load.
        entry = passwd.PasswdEntry("", msg.stored, 0, 0, "",
                                   weak=cfg.auth.allow_weak_schemes)
        ok = verifier.verify(entry, msg.secret)
        ipc.send(sock, "VERIFIED", job=msg.job, ok=int(ok))


class Broker:
    def __init__(self, cfg, sup):
        self.cfg = cfg
        self.sup = sup
        self.slots = {}
        self.sel = selectors.DefaultSelector()
        self.sel.register(sup, selectors.EVENT_READ, ("supervisor", None))
        self.accounts = accounts.Accounts(cfg.auth)
        self.verifier = passwd.Verifier(default_scheme="SHA512-CRYPT")
        self.service_uids, self.service_gids = service_ids(cfg)
        lim = cfg.limits
        self.throttle = throttle.Throttle(lim.auth_failure_window, lim.auth_delay_min,
                                          lim.auth_delay_max,
                                          lim.auth_throttle_memory << 20)
        # A connection has at most one request in flight, so admission's
        # per-address cap already bounds what one address can queue.
        self.queue = FairQueue(lim.auth_queue, lim.max_per_ip)
        self.workers = {}                  # socket -> job id in progress (or None)
        self.jobs = {}                     # job id -> Job
        self.next_job = 1
        self.timers = []                   # heap of (due, seq, job, good)
        self.pam_failures = collections.deque(maxlen=limits.PAM_FAILURE_SAMPLES)
        # limits.login_delay: login -> when its last session ended.  Only
        # users who logged in are here, for at most the delay.
        self.session_ended = {}
        # ...and logins granted whose session has not ended yet: a client
        # that sends QUIT and logs in at once must wait too, although its
        # old session's process is still exiting.
        self.in_session = collections.Counter()
        self.seq = 0
        # Counters for `popd ctl stats`, sent to the supervisor (BROKER_STATS)
        # at most every limits.PROGRESS_INTERVAL once they have moved.
        self.counts = dict.fromkeys(("ok_pass", "ok_plain", "failed_pass", "failed_plain",
                                     "delayed", "delay_ms"), 0)
        self.counts_due = None
        self.sent_queue = 0

    # -- workers -------------------------------------------------------------
    def spawn_worker(self):
        ours, theirs = ipc.socketpair()
        process.fork_role("auth worker", worker_main, self.cfg, theirs, self.verifier)
        theirs.close()
        self.workers[ours] = None
        self.sel.register(ours, selectors.EVENT_READ, ("worker", ours))

    def read_worker(self, sock):
        try:
            msg = ipc.recv(sock, Channel.BROKER_WORKER, Role.BROKER)
        except (ipc.Closed, ipc.Violation) as e:
            job_id = self.workers.pop(sock)
            self.sel.unregister(sock)
            sock.close()
            log.error("auth worker ended (%s); starting another", e)
            process.reap_children()        # it, and any other
            job = self.jobs.pop(job_id, None) if job_id else None
            if job:
                self.answer_later(job, None)
            self.spawn_worker()
            return
        job = self.jobs.pop(msg.job, None)
        if self.workers.get(sock) != msg.job or job is None:
            log.error("auth worker answered job %d it was not given", msg.job)
            return
        self.workers[sock] = None
        if msg.ok == pam_auth.WRONG and job.entry is not None and job.entry.source == "pam":
            self.pam_failures.append(time.monotonic() - job.arrived)
        good = bool(msg.ok) and job.entry is not None and job.well_formed
        if good and msg.ok == pam_auth.REFUSED:
            job.refusal = job.refusal or "refused by PAM account management (pam_acct_mgmt)"
        if good and job.refusal:
            # The right password of an account that may not log in: the
            # client hears what a wrong one hears; the log says why.
            job.refused, good = True, False
        self.answer_later(job, good)
        self.dispatch()

    def dispatch(self):
        for sock, busy in self.workers.items():
            if busy is not None:
                continue
            job = self.queue.pop()
            if job is None:
                return
            if job.chan.closed:
                continue
            job_id, self.next_job = self.next_job, self.next_job % 0xFFFFFFFF + 1
            # No entry, or one with no hash to check (a locked or expired
            # shadow entry): the broker's dummy, whose cost follows the
            # accounts (a worker's own copy is from before they loaded).
            stored = (job.entry and job.entry.password) or self.verifier.dummy_entry().password
            try:
                if self.uses_pam(job):
                    ipc.send(sock, "VERIFY_PAM", job=job_id, login=job.login,
                             secret=job.secret)
                else:
                    ipc.send(sock, "VERIFY", job=job_id, stored=stored,
                             secret=job.secret)
            except OSError:
                self.answer_later(job, None)
                continue
            self.jobs[job_id] = job
            self.workers[sock] = job_id
            job.queued = time.monotonic() - job.arrived

    def uses_pam(self, job):
        return job.entry is not None and job.entry.source == "pam"

    def pam_failure_time(self):
        """How long PAM's recent wrong passwords took to answer (median of
        the last PAM_FAILURE_SAMPLES), for an unknown user to take as long:
        pam_unix answers an unknown name in a few ms and a wrong password
        in tens (measured: 4 ms against 68 ms)."""
        if not self.pam_failures:
            return limits.PAM_FAILURE_DEFAULT
        ordered = sorted(self.pam_failures)
        return ordered[len(ordered) // 2]

    def stop_workers(self):
        for sock in list(self.workers):
            sock.close()                   # EOF: the worker exits
        while True:
            try:
                os.wait()
            except ChildProcessError:
                return

    # -- the loop ------------------------------------------------------------
    def run(self):
        while True:
            due = [t for t in (self.timers[0][0] if self.timers else None,
                               self.counts_due) if t is not None]
            timeout = max(0.0, min(due) - time.monotonic()) if due else None
            events = self.sel.select(timeout)
            # The supervisor first: a CHANNEL_BIND always precedes the
            # front's first request, and must be seen before it.
            events.sort(key=lambda e: e[0].data[0] != "supervisor")
            for key, _ in events:
                if self.sel.get_map().get(key.fd) is not key:
                    continue               # closed by an earlier event of this turn
                kind, arg = key.data
                if kind == "supervisor":
                    self.read_supervisor()
                elif kind == "worker":
                    self.read_worker(arg)
                elif kind == "front":
                    self.read_front(arg)
                else:
                    self.close_slot(arg, None)      # the slot's child ended
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, job, good = heapq.heappop(self.timers)
                self.finish(job, good)
            if self.queue.size != self.sent_queue:
                self.count("delayed", 0)        # the queue's depth moved: report it
            if self.counts_due is not None and now >= self.counts_due:
                self.send_counts()

    def count(self, name, amount=1):
        self.counts[name] += amount
        if self.counts_due is None:
            self.counts_due = time.monotonic() + limits.PROGRESS_INTERVAL

    def send_counts(self):
        self.counts_due = None
        try:
            ipc.send(self.sup, "BROKER_STATS", queued=self.queue.size,
                     workers=len(self.workers), **self.counts)
            self.sent_queue = self.queue.size
        except OSError:
            pass                    # a full channel: the next change sends them again

    # -- supervisor ----------------------------------------------------------
    def read_supervisor(self):
        try:
            msg = ipc.recv(self.sup, Channel.SUPERVISOR_BROKER, Role.BROKER)
        except ipc.Closed:
            self.stop_workers()
            raise SystemExit(0)           # the supervisor is gone: so are we
        except ipc.Violation as e:
            log.error("broker: bad frame from the supervisor: %s", e)
            raise SystemExit(1)
        self.SUPERVISOR_REQUESTS[msg.name](self, msg)

    def answer_channels_new(self, msg):
        front, child = (socket.socket(fileno=fd) for fd in msg.fds)
        if msg.slot in self.slots:
            self.close_slot(self.slots[msg.slot], "slot id reused")
        chan = SlotChannels(msg.slot, front, child)
        self.slots[msg.slot] = chan
        self.sel.register(front, selectors.EVENT_READ, ("front", chan))
        self.sel.register(child, selectors.EVENT_READ, ("child", chan))

    def answer_session_ended(self, msg):
        self.session_end(msg.login)

    def answer_channel_bind(self, msg):
        chan = self.slots.get(msg.slot)
        if chan is None or chan.state is not ChannelState.UNBOUND:
            log.warning("broker: CHANNEL_BIND for slot %d in state %s",
                        msg.slot, chan.state.value if chan else "none")
            return
        chan.peer_ip = msg.peer_ip
        chan.session = msg.session
        chan.address = addresses.address_key(msg.peer_ip)
        chan.state = ChannelState.BOUND

    # Every message the supervisor may send (ipc.py checks the channel and
    # the direction before this table is read).
    SUPERVISOR_REQUESTS = {"CHANNELS_NEW": answer_channels_new,
                           "SESSION_ENDED": answer_session_ended,
                           "CHANNEL_BIND": answer_channel_bind}

    def drain_supervisor(self):
        """Read whatever the supervisor has already sent, without waiting."""
        while True:
            self.sup.setblocking(False)
            try:
                self.read_supervisor()
            except BlockingIOError:
                return
            finally:
                self.sup.setblocking(True)

    # -- fronts --------------------------------------------------------------
    def read_front(self, chan):
        if chan.front is None:            # closed earlier in this loop turn
            return
        if chan.state is ChannelState.UNBOUND:
            # The front may have read its client's PASS before our
            # supervisor channel delivered the CHANNEL_BIND naming it.
            self.drain_supervisor()
        try:
            msg = ipc.recv(chan.front, Channel.BROKER_FRONT, Role.BROKER, chan.state)
        except ipc.Closed:
            self.close_slot(chan, None)
            return
        except ipc.Violation as e:
            self.close_slot(chan, f"bad frame: {e}")
            return
        self.FRONT_REQUESTS[msg.name](self, chan, msg)

    def answer_auth_request(self, chan, msg):
        self.refresh_accounts()
        login = msg.authcid
        well_formed = passwd.valid_login(login) and msg.authzid in ("", login)
        entry = self.accounts.lookup(login) if well_formed else None
        refusal = entry and accounts.refusal(entry, chan.peer_ip, self.cfg.auth.deny_shells)
        job = Job(chan, msg, entry, well_formed,
                  self.throttle.delay(login, chan.address), refusal)
        chan.state = ChannelState.WAITING
        if entry is None and self.cfg.auth.backend[-1] == "pam":
            # Unknown to every backend, the last being PAM: asking PAM
            # would answer too fast; the answer waits as long as PAM's
            # wrong passwords do, on the timer heap, holding no worker.
            job.due = max(job.due, job.arrived + self.pam_failure_time())
            self.answer_later(job, False)
            return
        suspect = self.throttle.suspect(chan.address, job.arrived)
        if not self.queue.push(chan.address, job, suspect):
            log.warning("auth queue full: rip=%s, user=\"%s\"", chan.peer_ip,
                        sanitize(login, 64), session=chan.session)
            self.finish(job, None)
            return
        self.dispatch()

    def refresh_accounts(self):
        """Re-read a changed passwd or shadow file; dummy hashes then follow
        the schemes and costs they use, so unknown users cost what known
        ones do."""
        if self.accounts.refresh():
            self.verifier.warm_up(self.accounts.known_hashes())
            self.verifier.default_scheme = self.accounts.default_scheme()

    def answer_later(self, job, good):
        """Record a failure now (so the next attempt sees it), answer when
        the throttle's delay has passed; a right password waits at most
        auth_delay_max_success from its arrival, so that guessers cannot
        push its answer past the login deadline.  good=None: could not
        check.  A success is recorded only once the client has its +OK
        (answer_login_done)."""
        if good is False:
            self.throttle.failed(job.login, job.chan.address)
        due = job.due
        if good:
            due = min(due, job.arrived + self.cfg.limits.auth_delay_max_success)
        if due - job.arrived >= 0.001:
            self.count("delayed")
            self.count("delay_ms", int((due - job.arrived) * 1000))
        self.seq += 1
        heapq.heappush(self.timers, (due, self.seq, job, good))

    def finish(self, job, good):
        chan = job.chan
        if (good and not chan.closed and chan.front is not None
                and select.select([chan.front], [], [], 0)[0]):
            # The front must not speak while it waits, so readable means
            # it has gone (given up at its deadline): no grant to a gone client.
            self.read_front(chan)
        if chan.closed or chan.state is not ChannelState.WAITING:
            if good:
                log.info('login abandoned: rip=%s, user="%s": the front was '
                         'gone before the grant', chan.peer_ip, sanitize(job.login, 64),
                         session=chan.session)
            return
        chan.state = ChannelState.BOUND
        if good is None:
            self.send_front(chan, "AUTH_FAIL", code="SYS/TEMP", final=0)
        elif good and self.login_delay_left(job.login):
            # Only a right password learns of the delay: a guesser cannot
            # tell from it who logged in lately.
            log.info('login refused: rip=%s, user="%s": LOGIN-DELAY, %.0f s left',
                     chan.peer_ip, sanitize(job.login, 64), self.login_delay_left(job.login),
                     session=chan.session)
            self.send_front(chan, "AUTH_FAIL", code="LOGIN-DELAY", final=1)
            self.close_front(chan)
        elif good:
            self.grant(chan, job)
        else:
            self.refuse(chan, job)

    def refuse(self, chan, job):
        chan.failures += 1
        if job.refused:
            log.warning('auth refused: rip=%s, user="%s", source=%s: %s',
                        chan.peer_ip, sanitize(job.login, 64), job.entry.source,
                        sanitize(job.refusal, 200), session=chan.session)
        reason = ("account-refused" if job.refused else
                  "password-mismatch" if job.entry else
                  "unknown-user" if job.well_formed else "bad-name")
        log.warning('auth failed: rip=%s, method=%s, attempt=%d, reason=%s, '
                    'user="%s"', chan.peer_ip, job.method, chan.failures, reason,
                    sanitize(job.login, 64), session=chan.session)
        self.count("failed_plain" if job.method == "PLAIN" else "failed_pass")
        final = chan.failures >= self.cfg.limits.max_auth_failures
        self.send_front(chan, "AUTH_FAIL", code="AUTH", final=int(final))
        if final:
            self.close_front(chan)

    def grant(self, chan, job):
        entry = job.entry
        problem = self.grant_problem(entry)
        mbox = None
        try:
            mbox = mailpath.expand(entry.mail or self.cfg.mail.mbox, job.login, entry.home)
        except ValueError as e:
            problem = problem or f"no mailbox path: {e}"
        if problem:
            log.error('refusing login for user="%s": %s', sanitize(job.login, 64),
                      sanitize(problem, 300), session=chan.session)
            self.send_front(chan, "AUTH_FAIL", code="SYS/PERM", final=1)
            self.close_front(chan)
            return
        try:
            ipc.send(chan.child, "GRANT", login=job.login, uid=entry.uid,
                     gid=entry.gid, mbox=mbox)
            ipc.send(self.sup, "GRANTED", slot=chan.slot, uid=entry.uid,
                     gid=entry.gid, login=job.login, mbox=mbox)
        except OSError as e:
            self.close_slot(chan, f"cannot send the grant: {e}")
            return
        chan.state = ChannelState.GRANTED
        chan.login = job.login
        if self.cfg.limits.login_delay:
            self.in_session[job.login] += 1   # until the supervisor's SESSION_ENDED
        self.count("ok_plain" if job.method == "PLAIN" else "ok_pass")
        log.info('login: rip=%s, method=%s, queued=%.3f, user="%s", uid=%d',
                 chan.peer_ip, job.method, job.queued, sanitize(job.login, 64),
                 entry.uid, session=chan.session)
        if entry.weak:
            log.warning('user="%s" logged in with a weak %s hash in %s: re-hash it '
                        'with popd-passwd', sanitize(job.login, 64),
                        passwd.scheme_of(entry.password, True), self.cfg.auth.passwd_file,
                        session=chan.session)
        self.send_front(chan, "AUTH_OK")

    def session_end(self, login):
        """The supervisor saw a granted session's child end: LOGIN-DELAY
        counts from now."""
        if self.cfg.limits.login_delay:
            now = time.monotonic()
            self.session_ended[login] = now
            self.in_session[login] -= 1
            if self.in_session[login] <= 0:
                del self.in_session[login]
            if len(self.session_ended) > 1024:
                horizon = now - self.cfg.limits.login_delay
                self.session_ended = {k: t for k, t in self.session_ended.items()
                                      if t > horizon}

    def login_delay_left(self, login):
        """Seconds this user must still wait (RFC 2449 LOGIN-DELAY), or 0."""
        if not self.cfg.limits.login_delay:
            return 0
        if self.in_session.get(login):
            return float(self.cfg.limits.login_delay)
        ended = self.session_ended.get(login)
        if ended is None:
            return 0
        return max(0.0, ended + self.cfg.limits.login_delay - time.monotonic())

    def answer_login_done(self, chan, msg):
        """The front told its client +OK: now the login counts as this
        (user, address)'s recent success."""
        chan.state = ChannelState.DONE
        self.throttle.succeeded(chan.login, chan.address)

    # Every message a front may send; ipc.MESSAGES declares the one channel
    # state each is accepted in (AUTH_REQUEST: bound; LOGIN_DONE: granted),
    # and recv() refuses it in any other: the channel is closed.
    FRONT_REQUESTS = {"AUTH_REQUEST": answer_auth_request,
                      "LOGIN_DONE": answer_login_done}

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
                        chan.peer_ip, reason, session=chan.session)
        chan.closed = True
        self.close_front(chan)
        if chan.child is not None:
            self.sel.unregister(chan.child)
            chan.child.close()
            chan.child = None
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
    for _ in range(cfg.limits.auth_workers):
        broker.spawn_worker()
    privileges.drop_to(cfg.broker_user, cfg.broker_group, groups=broker_groups(cfg))
    # Its tables are bounded (throttle.py, FairQueue); this bounds the
    # rest, whatever unauthenticated clients make it hold.
    privileges.limit_memory(cfg.limits.broker_memory)
    broker.refresh_accounts()
    problems = broker.accounts.problems()
    if problems:
        for problem in problems:
            log.error("auth broker: %s", problem)
        raise SystemExit(1)
    ipc.send(sup_sock, "BROKER_READY")
    broker.run()
