"""What the supervisor counts, and its answers to `popd ctl`.

Runs in: the supervisor.  Every figure comes from the supervisor's own
state (accepts, refusals, slots, grants, kills) or from what its peers
report over their channels (the broker's BROKER_STATS, each session's
SESSION_PROGRESS and CHILD_DONE), which are trusted for nothing but being
shown: a session child runs as its mailbox owner and may lie about its
own byte count, nothing more.  Counters run from the supervisor's start;
a reload keeps them (a retired broker's counts are folded in when it
exits).  metrics_text() writes them in the OpenMetrics text format.
"""
import collections
import os
import time

from popd import __version__

# Accept to grant, in seconds: what a login costs a client (the broker's
# hashing and delays included, the client's own typing too).
LOGIN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BROKER_FIELDS = ("ok_pass", "ok_plain", "failed_pass", "failed_plain", "delayed", "delay_ms")
REFUSALS = ("limit", "per-ip", "shutdown", "untrusted-proxy", "bad-proxy-header")
# Why the supervisor killed a slot: the login deadline passed before a
# grant; a granted session stalled or stopped (sessions.py); the shutdown
# grace ran out; anything else (a forbidden grant, a broken channel).
KILLS = ("login-deadline", "stalled", "stopped", "shutdown-grace", "other")


class Stats:
    def __init__(self):
        self.started = time.time()
        self.connections = 0
        self.refused = collections.Counter()
        self.killed = collections.Counter(dict.fromkeys(KILLS, 0))   # sessions killed, by reason
        self.reloads = 0
        self.sessions = 0                          # sessions that began
        self.bytes_sent = self.retrieved = self.deleted = 0
        self.login_buckets = [0] * len(LOGIN_BUCKETS)
        self.login_count = 0
        self.login_sum = 0.0
        self.broker_base = dict.fromkeys(BROKER_FIELDS, 0)   # brokers that exited

    def login(self, seconds):
        self.login_count += 1
        self.login_sum += seconds
        for i, bound in enumerate(LOGIN_BUCKETS):
            if seconds <= bound:
                self.login_buckets[i] += 1

    def session_done(self, msg):
        self.bytes_sent += msg.bytes_sent
        self.retrieved += msg.retrieved
        self.deleted += msg.deleted

    def broker_exited(self, link):
        for name in BROKER_FIELDS:
            self.broker_base[name] += link.counts.get(name, 0)
        link.counts = {}

    def broker_totals(self, links):
        totals = dict(self.broker_base)
        for link in links:
            for name in BROKER_FIELDS:
                totals[name] += link.counts.get(name, 0)
        return totals


def status(sup):
    pool = sup.pool
    states = collections.Counter(s.state.value for s in pool.slots.values())
    links = [sup.broker] + sup.retired
    return {
        "version": __version__, "pid": os.getpid(),
        "uptime": round(time.time() - sup.stats.started, 3),
        "listeners": [listen_label(l) for l, _ in sup.sockets],
        "slots": {"idle": states["idle"], "busy": states["busy"],
                  "starting": states["starting"],
                  "max": sup.cfg.limits.max_children, "spare": sup.cfg.limits.spare_children},
        "sessions": sum(1 for s in pool.slots.values() if s.granted),
        "waiting": len(sup.pending), "proxy_headers_waiting": len(sup.proxied.waiting),
        "broker": {"alive": not sup.broker.exited, "pid": sup.broker.pid,
                   "workers": sup.broker.counts.get("workers", 0),
                   "queued": sup.broker.counts.get("queued", 0),
                   "retired": sum(1 for l in links[1:] if not l.exited)},
        "reloads": sup.stats.reloads,
        "stopping": sup.stopping,
    }


def listen_label(listen):
    return {"address": listen.address, "port": listen.port, "tls": listen.tls,
            "proxy": listen.proxy}


def who(sup):
    now_wall, now = time.time(), time.monotonic()
    out = []
    for slot in sorted(sup.pool.slots.values(), key=lambda s: s.busy_since or 0):
        if slot.busy_since is None or slot.state.value != "busy":
            continue
        out.append({
            "session": slot.session, "pid": slot.pid, "user": slot.login or None,
            "address": slot.peer, "listener": slot.listener_tls,
            "tls": slot.tls, "state": ("session" if slot.tls is not None else
                                       "opening" if slot.granted else "login"),
            "since": round(now_wall - (now - slot.busy_since), 3),
            "bytes_sent": slot.bytes_sent, "retrieved": slot.retrieved,
            "deleted": slot.deleted})
    return out


def counters(sup):
    st = sup.stats
    broker = st.broker_totals([sup.broker] + sup.retired)
    return {
        "connections": st.connections,
        "refused": {r: st.refused[r] for r in REFUSALS},
        "logins": {"PASS": {"ok": broker["ok_pass"], "failed": broker["failed_pass"]},
                   "PLAIN": {"ok": broker["ok_plain"], "failed": broker["failed_plain"]}},
        "auth_delayed": broker["delayed"],
        "auth_delay_seconds": broker["delay_ms"] / 1000,
        "login_seconds": {"buckets": dict(zip(map(str, LOGIN_BUCKETS), st.login_buckets)),
                          "count": st.login_count, "sum": round(st.login_sum, 6)},
        "sessions": st.sessions,
        "retrieved": st.retrieved, "bytes_sent": st.bytes_sent, "deleted": st.deleted,
        "killed": dict(st.killed),
        "reloads": st.reloads,
    }


def metrics_text(sup):
    """The counters and gauges in the OpenMetrics text format."""
    c, s = counters(sup), status(sup)
    out = []

    def metric(name, kind, help_text, samples):
        out.append(f"# TYPE popd_{name} {kind}")
        out.append(f"# HELP popd_{name} {help_text}")
        for suffix, labels, value in samples:
            label_text = ",".join(f'{k}="{v}"' for k, v in labels)
            out.append(f"popd_{name}{suffix}{{{label_text}}} {value}" if label_text
                       else f"popd_{name}{suffix} {value}")

    metric("start_time_seconds", "gauge", "When the supervisor started (Unix time).",
           [("", (), round(sup.stats.started, 3))])
    metric("connections", "counter", "Connections accepted.",
           [("_total", (), c["connections"])])
    metric("refusals", "counter", "Connections refused before a slot, by reason.",
           [("_total", (("reason", r),), n) for r, n in c["refused"].items()])
    metric("logins", "counter", "Logins decided by the broker, by method and result.",
           [("_total", (("method", m), ("result", res)), n)
            for m, results in c["logins"].items() for res, n in results.items()])
    metric("auth_delayed", "counter", "Broker answers held back by the guessing delays.",
           [("_total", (), c["auth_delayed"])])
    metric("auth_delay_seconds", "counter", "Seconds of guessing delay applied.",
           [("_total", (), c["auth_delay_seconds"])])
    # Each bucket already counts every login at or below its bound.
    buckets = [("_bucket", (("le", str(b)),), n)
               for b, n in zip(LOGIN_BUCKETS, sup.stats.login_buckets)]
    buckets.append(("_bucket", (("le", "+Inf"),), sup.stats.login_count))
    metric("login_seconds", "histogram", "Seconds from accept to the broker's grant.",
           buckets + [("_count", (), sup.stats.login_count),
                      ("_sum", (), round(sup.stats.login_sum, 6))])
    metric("sessions_started", "counter", "Logged-in sessions that began.",
           [("_total", (), c["sessions"])])
    metric("retrieved_messages", "counter", "Messages sent whole by RETR, at session end.",
           [("_total", (), c["retrieved"])])
    metric("sent_bytes", "counter", "Message bytes sent (RETR, TOP), at session end.",
           [("_total", (), c["bytes_sent"])])
    metric("deleted_messages", "counter", "Messages removed at QUIT (DELE, EXPIRE).",
           [("_total", (), c["deleted"])])
    metric("sessions_killed", "counter", "Sessions the supervisor killed, by reason.",
           [("_total", (("reason", r),), n) for r, n in sorted(c["killed"].items())])
    metric("reloads", "counter", "Configuration reloads (SIGHUP).",
           [("_total", (), c["reloads"])])
    metric("slots", "gauge", "Pool slots by state.",
           [("", (("state", k),), s["slots"][k]) for k in ("idle", "busy", "starting")])
    metric("slots_max", "gauge", "limits.max_children.", [("", (), s["slots"]["max"])])
    metric("sessions", "gauge", "Logged-in sessions now.", [("", (), s["sessions"])])
    metric("auth_queue", "gauge", "Logins waiting for a hashing worker.",
           [("", (), s["broker"]["queued"])])
    metric("auth_workers", "gauge", "Hashing workers alive.",
           [("", (), s["broker"]["workers"])])
    out.append("# EOF")
    return "\n".join(out) + "\n"
