"""popd side by side with Dovecot: the figures an operator sizes a
deployment with, from one run on one machine.

Run as root from the source tree:

    /opt/popd/bin/python bench/compare.py                 # popd alone
    /opt/popd/bin/python bench/compare.py --dovecot       # and Dovecot (apt-get if missing)
    /opt/popd/bin/python bench/compare.py --dovecot --quick --only login,retr

It generates deterministic mailboxes, starts popd (and Dovecot) on loopback
with the same users, hashes (SHA512-CRYPT, 5000 rounds), mailboxes and
certificate, runs each scenario against each server, checks every byte
received against an independent reference transform (bench/compare_data.py)
and prints one table: popd, Dovecot, popd/Dovecot, the target.
"""
import argparse
import asyncio
import datetime
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import compare_client as cl  # noqa: E402
from bench import compare_data as data  # noqa: E402
from bench import session_memory  # noqa: E402
from bench.compare_servers import (Dovecot, Popd, Tree, dovecot_version,  # noqa: E402
                                   ensure_dovecot, machine_busy_seconds, pss_kb,
                                   wait_settled)
from tests.daemon import FIRST_VALID_UID  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = ("login", "retr", "open", "pss", "slowloris")
PASSWORD = "benchpass"
ATTACK_SOURCE = "127.0.0.2"

FULL = dict(login_seconds=10, retr_bytes=200_000_000, retr_reps=3, open_messages=100_000,
            open_repeats=3, pss_counts=(50, 200), pss_tls=50, attack=300, legit_seconds=10,
            legit_interval=0.1)
QUICK = dict(login_seconds=3, retr_bytes=20_000_000, retr_reps=1, open_messages=10_000,
             open_repeats=2, pss_counts=(20, 50), pss_tls=20, attack=300, legit_seconds=4,
             legit_interval=0.1)


# -- results --------------------------------------------------------------------------

class Row:
    def __init__(self, label, unit, better, target=None, fmt="{:.1f}"):
        """better: 'higher' or 'lower'; target: (kind, number) with kind
        'ratio>=', 'ratio<=' or 'popd<='."""
        self.label, self.unit, self.better, self.target, self.fmt = label, unit, better, target, fmt
        self.value, self.cores, self.error = {}, {}, {}

    def set(self, server, value, cores=None):
        self.value[server] = value
        if cores:
            self.cores[server] = cores

    def fail(self, server, message):
        self.error[server] = message

    def cell(self, server):
        """The figure; '*' when some sessions failed (see Failures), FAILED
        when there is no figure."""
        v = self.value.get(server)
        if v is None:
            return "FAILED" if server in self.error else "-"
        return self.fmt.format(v) + ("*" if server in self.error else "")

    def ratio(self):
        p, d = self.value.get("popd"), self.value.get("Dovecot")
        if p is None or not d:
            return None
        return p / d

    def target_text(self):
        if not self.target:
            return ""
        kind, number = self.target
        return {"ratio>=": f"ratio >= {number:g}", "ratio<=": f"ratio <= {number:g}",
                "popd<=": f"popd <= {number:g}"}[kind]

    def met(self):
        if not self.target:
            return ""
        kind, number = self.target
        value = self.value.get("popd") if kind == "popd<=" else self.ratio()
        if value is None:
            return "?"
        ok = value >= number if kind == "ratio>=" else value <= number
        return ("yes" if ok else "NO") + ("*" if self.error else "")


class Meter:
    """Client CPU (this process), server CPU (its cgroup, or its process
    tree) and everything else the machine did, in cores, over an interval."""

    def __init__(self, procs):
        self.procs = procs
        self.r0 = resource.getrusage(resource.RUSAGE_SELF)
        self.s0 = procs.cpu()
        self.m0 = machine_busy_seconds()
        self.t0 = time.perf_counter()

    def stop(self):
        wall = time.perf_counter() - self.t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        client = (r1.ru_utime - self.r0.ru_utime) + (r1.ru_stime - self.r0.ru_stime)
        server = self.procs.cpu() - self.s0
        busy = machine_busy_seconds() - self.m0
        return {"wall": wall, "client": client / wall, "server": server / wall,
                "server_s": server, "other": max(0.0, busy - client - server) / wall}


def pct(values, p):
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[max(0, min(len(s), math.ceil(p * len(s))) - 1)]


def cores_text(c):
    return f"client {c['client']:.2f} / server {c['server']:.2f} / other {c['other']:.2f} cores"


# -- the run ----------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.p = dict(QUICK if args.quick else FULL)
        if args.login_seconds:
            self.p["login_seconds"] = args.login_seconds
        self.rows, self.details, self.checks = [], [], []
        self.servers = []
        self.work = Path(tempfile.mkdtemp(prefix="popd-compare-", dir=args.tmpdir))
        os.chmod(self.work, 0o755)
        self.users = {f"b{i:03d}": (PASSWORD, FIRST_VALID_UID + i, FIRST_VALID_UID + i)
                      for i in range(1, 201)}
        self.users["retr"] = (PASSWORD, FIRST_VALID_UID + 901, FIRST_VALID_UID + 901)
        self.users["big"] = (PASSWORD, FIRST_VALID_UID + 902, FIRST_VALID_UID + 902)
        self.small_users = sorted(u for u in self.users if u.startswith("b"))

    def log(self, text):
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    # -- data -------------------------------------------------------------------------
    def make_data(self, wanted):
        d = self.work / "data"
        d.mkdir()
        self.files, self.refs = {}, {}
        self.files["small"] = d / "small"
        self.files["small"].write_bytes(data.small_mbox())
        self.refs["small"] = data.Reference(self.files["small"].read_bytes())
        if "retr" in wanted:
            t = time.perf_counter()
            path = self.files["retr"] = d / "retr"
            data.mixed_mbox(path, self.p["retr_bytes"])
            self.refs["retr"] = data.Reference(path.read_bytes())
            r = self.refs["retr"]
            self.log(f"retr mailbox: {r.count} messages, {path.stat().st_size / 1e6:.1f} MB "
                     f"stored, {r.wire_bytes / 1e6:.1f} MB as sent, largest "
                     f"{max(r.sizes) / 1e6:.2f} MB ({time.perf_counter() - t:.1f} s)")
        if "open" in wanted:
            t = time.perf_counter()
            path = self.files["big"] = d / "big"
            data.many_mbox(path, self.p["open_messages"])
            self.refs["big"] = data.Reference(path.read_bytes(), keep_wire=False)
            self.log(f"open mailbox: {self.refs['big'].count} messages, "
                     f"{path.stat().st_size / 1e6:.0f} MB ({time.perf_counter() - t:.1f} s)")

    @property
    def small_stat(self):
        return self.refs["small"].count, self.refs["small"].octets

    # -- servers --------------------------------------------------------------------------
    def start_servers(self, wanted):
        # Room for the 200-session memory test, and for 16 concurrent
        # logins from one address in the broker's queue (by default an
        # address may have auth_queue/8 = 8 waiting; beyond: [SYS/TEMP]).
        limits = {"max_children": 256, "spare_children": 16, "max_per_ip": 256,
                  "auth_queue": 256}
        self.popd = Popd(self.users, limits, tls=True, key_type=self.args.key_type,
                         cgroup=not self.args.no_cgroup)
        for login in self.small_users:
            self.popd.install_mbox(login, self.files["small"])
        self.servers.append(self.popd)
        self.ctx = cl.client_context(self.popd.tls_files[2])
        self.dovecot = None
        if self.args.dovecot:
            ensure_dovecot()
            self.dovecot = Dovecot(self.work, self.users, self.popd.passwd_lines(),
                                   self.popd.tls_files, FIRST_VALID_UID,
                                   cgroup=not self.args.no_cgroup)
            for login in self.small_users:
                self.dovecot.install_mbox(login, self.files["small"])
            self.servers.append(self.dovecot)
        if wanted - {"slowloris"}:
            self.popd.start()
            self.log(f"popd started: limits {limits}, plaintext always, spare slots ready")
        if self.dovecot:
            self.dovecot.start()
            self.log(f"Dovecot {dovecot_version()} started: {self.dovecot.conf}")

    def settle(self, srv):
        """Before a measurement: the server idle and ready, and with
        --wait-quiet, the machine too (busy CPU below 0.15 cores for 2 s)."""
        if isinstance(srv, Popd):
            srv.wait_ready()
        else:
            wait_settled(srv.procs, quiet=0.5, timeout=20)
        self.cpu_kind = srv.procs.kind
        if self.args.wait_quiet:
            deadline = time.monotonic() + self.args.wait_quiet
            calm = 0
            while calm < 4 and time.monotonic() < deadline:
                b0 = machine_busy_seconds()
                time.sleep(0.5)
                calm = calm + 1 if machine_busy_seconds() - b0 < 0.075 else 0
            if calm < 4:
                self.log(f"machine still busy after waiting {self.args.wait_quiet:g} s")

    # -- scenarios --------------------------------------------------------------------------
    def login(self):
        labels = {"plain": "login rate, plain (16 clients)",
                  "stls": "login rate, STLS (16 clients)",
                  "implicit": "login rate, implicit TLS (16 clients)"}
        for mode in ("plain", "stls", "implicit"):
            # Issue 18's targets (issue 7's were 1.2, 1.0, 1.0).
            row = Row(labels[mode], "logins/s", "higher",
                      ("ratio>=", {"plain": 1.25, "stls": 1.15, "implicit": 1.2}[mode]))
            self.rows.append(row)
            for srv in self.servers:
                self.settle(srv)
                port = srv.tls_port if mode == "implicit" else srv.port
                m = Meter(srv.procs)
                lat, errors, wall = asyncio.run(cl.login_rate(
                    srv.host, port, mode, self.ctx, self.small_users, PASSWORD,
                    self.small_stat, self.p["login_seconds"]))
                c = m.stop()
                if not lat:
                    row.fail(srv.name, f"no login succeeded: {errors}")
                    continue
                row.set(srv.name, len(lat) / wall, c)
                self.details.append(
                    f"{row.label}, {srv.name}: {len(lat)} sessions in {wall:.1f} s; session "
                    f"p50 {pct(lat, .5) * 1e3:.1f} ms, p99 {pct(lat, .99) * 1e3:.1f} ms; "
                    f"server CPU {c['server_s'] / len(lat) * 1e3:.2f} ms/session; "
                    f"{cores_text(c)}; errors {errors or 0}")
                if errors:
                    row.fail(srv.name, f"{sum(errors.values())} sessions failed: {errors}")
                self.log(f"{row.label}: {srv.name} {len(lat) / wall:.1f}/s")

    def retr(self):
        ref = self.refs["retr"]
        labels = {"plain": f"RETR {ref.wire_bytes / 1e6:.0f} MB mixed, plain, 1 client",
                  "stls": f"RETR {ref.wire_bytes / 1e6:.0f} MB mixed, STLS, 1 client"}
        for mode in ("plain", "stls"):
            row = Row(labels[mode], "MB/s", "higher",
                      ("ratio>=", 1.2 if mode == "plain" else 1.0), fmt="{:.0f}")
            self.rows.append(row)
            for srv in self.servers:
                rates, cores, cipher = [], [], "-"
                try:
                    for _ in range(self.p["retr_reps"]):
                        srv.install_mbox("retr", self.files["retr"])
                        self.settle(srv)
                        elapsed, cipher, c = self.retr_once(srv, srv.port, mode)
                        rates.append(ref.wire_bytes / elapsed / 1e6)
                        cores.append(c)
                except (cl.ProtoError, OSError) as e:
                    row.fail(srv.name, cl.describe(e))
                    self.log(f"{row.label}: {srv.name} FAILED: {cl.describe(e)}")
                    continue
                med = statistics.median(rates)
                c = cores[rates.index(min(rates, key=lambda r: abs(r - med)))]
                row.set(srv.name, med, c)
                self.details.append(
                    f"{row.label}, {srv.name}: {med:.0f} MB/s (median of "
                    f"{[round(r) for r in rates]}), {ref.count} messages all byte-exact, LIST "
                    f"exact; {cipher}; {cores_text(c)}")
                self.log(f"{row.label}: {srv.name} {med:.0f} MB/s {[round(r) for r in rates]}")
        self.retr_ceiling()

    def retr_once(self, srv, port, mode):
        return cl.retr_run(srv.host, port, mode, self.ctx, "retr", PASSWORD, self.refs["retr"],
                           meter=lambda: Meter(srv.procs))

    def retr_ceiling(self):
        """The same client against a server that costs nothing: a forked
        process answering RETR from memory with sendall."""
        import ssl
        ref = self.refs["retr"]
        cert, key, _ = self.popd.tls_files
        sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        sctx.load_cert_chain(str(cert), str(key))
        for mode, server_ctx in (("plain", None), ("implicit", sctx)):
            port, pid = cl.fake_server(ref, server_ctx)

            class Fake:
                host, procs, name = "127.0.0.1", Tree(pid), "fake"
            try:
                runs = []                       # at least 1 s, for steady CPU figures
                while sum(r[0] for r in runs) < 1.0:
                    elapsed, cipher, c = self.retr_once(Fake, port, mode)
                    runs.append((elapsed, c))
                wall = sum(r[0] for r in runs)
                c = {k: sum(r[1][k] * r[1]["wall"] for r in runs) / sum(r[1]["wall"] for r in runs)
                     for k in ("client", "server", "other")}
                self.checks.append(
                    f"RETR client ceiling, {'plain' if mode == 'plain' else 'TLS'} (fake server "
                    f"answering from memory, {len(runs)} pass(es)): "
                    f"{ref.wire_bytes * len(runs) / wall / 1e6:.0f} MB/s, every byte checked; "
                    f"{cores_text(c)}")
            except (cl.ProtoError, OSError) as e:
                self.checks.append(f"RETR client ceiling ({mode}) failed: {cl.describe(e)}")
            finally:
                os.kill(pid, signal.SIGKILL)    # the fake server forked above
                os.waitpid(pid, 0)

    def open(self):
        ref = self.refs["big"]
        size = self.files["big"].stat().st_size
        what = f"{size / 1e9:.2f} GB / {ref.count:,} msgs"
        rows = {
            "first": Row(f"open+STAT {what}, first (no index)", "ms", "lower",
                         ("ratio<=", 0.25)),
            "repeat": Row(f"open+STAT {what}, repeat open", "ms", "lower", ("ratio<=", 2.0)),
            "uidl1": Row("UIDL after the first open", "ms", "lower"),
            "uidl2": Row("UIDL after a repeat open", "ms", "lower")}
        self.rows += rows.values()
        for srv in self.servers:
            srv.install_mbox("big", self.files["big"])
        time.sleep(1.1)         # no "modified within this second" special cases
        for srv in self.servers:
            self.settle(srv)
            try:
                m = Meter(srv.procs)
                first, uids = cl.open_run(srv.host, srv.port, "big", PASSWORD,
                                          ref.count, ref.octets)
                c = m.stop()
                again = []
                for _ in range(self.p["open_repeats"]):
                    t, uids2 = cl.open_run(srv.host, srv.port, "big", PASSWORD,
                                           ref.count, ref.octets)
                    if uids2 != uids:
                        raise cl.ProtoError("UIDL changed between sessions")
                    again.append(t)
            except (cl.ProtoError, OSError) as e:
                for row in rows.values():
                    row.fail(srv.name, cl.describe(e))
                self.log(f"open: {srv.name} FAILED: {cl.describe(e)}")
                continue
            rep = statistics.median(t["stat"] for t in again)
            rows["first"].set(srv.name, first["stat"] * 1e3, c)
            rows["repeat"].set(srv.name, rep * 1e3)
            rows["uidl1"].set(srv.name, first["uidl"] * 1e3)
            rows["uidl2"].set(srv.name, statistics.median(t["uidl"] for t in again) * 1e3)
            self.details.append(
                f"open, {srv.name}: first PASS→+OK {first['pass'] * 1e3:.0f} ms, PASS→STAT "
                f"{first['stat'] * 1e3:.0f} ms, UIDL {first['uidl'] * 1e3:.0f} ms, QUIT→close "
                f"{first['quit'] * 1e3:.0f} ms; repeats PASS→STAT "
                f"{[round(t['stat'] * 1e3, 1) for t in again]} ms, UIDL "
                f"{[round(t['uidl'] * 1e3) for t in again]} ms, QUIT→close "
                f"{[round(t['quit'] * 1e3) for t in again]} ms; STAT and {ref.count} unique "
                f"UIDs checked, UIDs stable across sessions; first session {cores_text(c)}")
            self.log(f"open: {srv.name} first {first['stat'] * 1e3:.0f} ms, repeat "
                     f"{rep * 1e3:.0f} ms")

    def pss(self):
        cases = [("plain", n) for n in self.p["pss_counts"]] + [("implicit", self.p["pss_tls"])]
        for mode, n in cases:
            label = f"PSS per logged-in session, {'plain' if mode == 'plain' else 'TLS'}, {n}"
            # Issue 18's targets (issue 7's were 2.5 and 5.0).
            row = Row(label, "MB", "lower", ("popd<=", 1.2 if mode == "plain" else 2.5),
                      fmt="{:.2f}")
            self.rows.append(row)
            for srv in self.servers:
                self.settle(srv)
                time.sleep(0.5)
                pids0 = wait_settled(srv.procs, quiet=1.0)
                base = pss_kb(pids0)
                by_role0 = session_memory.snapshot(pids0) if isinstance(srv, Popd) else None
                loop = asyncio.new_event_loop()
                try:
                    port = srv.tls_port if mode == "implicit" else srv.port
                    sessions, errors = loop.run_until_complete(cl.open_sessions(
                        srv.host, port, mode, self.ctx, self.small_users[:n], PASSWORD,
                        self.small_stat))
                    if errors or len(sessions) != n:
                        row.fail(srv.name, f"{n - len(sessions)} sessions failed: {errors}")
                    if isinstance(srv, Popd):
                        srv.wait_ready()
                    wait_settled(srv.procs, min_procs=len(pids0) + len(sessions), quiet=1.5)
                    time.sleep(0.5)
                    pids = srv.procs.pids()
                    total = pss_kb(pids)
                    if by_role0 is not None and sessions:
                        # Where a session's memory goes: by role, by mapping.
                        self.details.append(f"{label}, popd, per session by role and mapping:")
                        self.details += ["    " + line for line in session_memory.difference(
                            by_role0, session_memory.snapshot(pids), len(sessions))]
                    per = (total - base) / max(1, len(sessions)) / 1024
                    row.set(srv.name, per)
                    self.details.append(
                        f"{label}, {srv.name}: idle server {base / 1024:.1f} MB in {len(pids0)} "
                        f"processes; with {len(sessions)} sessions {total / 1024:.1f} MB in "
                        f"{len(pids)} processes; {per:.2f} MB/session")
                    self.log(f"{label}: {srv.name} {per:.2f} MB/session")
                    loop.run_until_complete(cl.close_sessions(sessions))
                finally:
                    loop.close()

    def slowloris(self):
        n = self.p["attack"]
        rows = {k: Row(f"legit login {k} under {n} held conns", "ms", "lower",
                       ("popd<=", 100) if k == "p99" else None)
                for k in ("p50", "p99", "max")}
        self.rows += rows.values()
        # popd as shipped: the default limits (per-IP cap, pool size).
        from popd.config import KEY_INDEX
        limits = {k: KEY_INDEX[f"limits.{k}"].default
                  for k in ("max_children", "spare_children", "max_per_ip", "auth_delay_min",
                            "login_deadline")}
        if self.popd.d.proc is not None:
            self.popd.stop()
        attack_popd = Popd(self.users, limits, tls=False, key_type=self.args.key_type,
                           cgroup=not self.args.no_cgroup, label="popd-defaults")
        for login in self.small_users:
            attack_popd.install_mbox(login, self.files["small"])
        attack_popd.start()
        self.log(f"popd restarted with the default limits {limits}")
        try:
            for srv in [attack_popd] + ([self.dovecot] if self.dovecot else []):
                self.settle(srv)
                socks = cl.attack_open(srv.host, srv.port, n, ATTACK_SOURCE)
                try:
                    time.sleep(2)
                    m = Meter(srv.procs)
                    lat, errors = asyncio.run(cl.legit_logins(
                        srv.host, srv.port, self.small_users, PASSWORD, self.small_stat,
                        self.p["legit_seconds"], self.p["legit_interval"]))
                    c = m.stop()
                    census = cl.attack_census(socks)
                finally:
                    for s in socks:
                        s.close()
                name = "popd" if srv is attack_popd else srv.name
                if lat:
                    for k, p in (("p50", .5), ("p99", .99), ("max", 1.0)):
                        rows[k].set(name, pct(lat, p) * 1e3, c if k == "p50" else None)
                if errors or not lat:
                    for row in rows.values():
                        row.fail(name, f"{sum(errors.values())} legit logins failed: {errors}")
                self.details.append(
                    f"held connections, {name}: {len(lat)} legit logins ok, "
                    f"{sum(errors.values())} failed {errors or ''}; latency p50 "
                    f"{pct(lat, .5) * 1e3 if lat else 0:.1f} / p99 "
                    f"{pct(lat, .99) * 1e3 if lat else 0:.1f} / max "
                    f"{max(lat, default=0) * 1e3:.1f} ms; the {n} connections from "
                    f"{ATTACK_SOURCE} after {self.p['legit_seconds'] + 2:.0f} s: {census}; "
                    f"{cores_text(c)}")
                self.log(f"held connections: {name} p99 "
                         f"{pct(lat, .99) * 1e3 if lat else float('nan'):.1f} ms")
        finally:
            attack_popd.stop()

    # -- output ------------------------------------------------------------------------------
    def table(self):
        head = ["scenario", "unit", "popd", "Dovecot", "popd/Dovecot", "better", "target",
                "met", "client cores", "other load"]
        lines = [head]
        names = ["popd"] + (["Dovecot"] if self.dovecot else [])

        def cores(r, key):
            if not r.cores:
                return ""
            return "/".join(f"{r.cores[n][key]:.2f}" if n in r.cores else "-" for n in names)
        for r in self.rows:
            ratio = r.ratio()
            lines.append([r.label, r.unit, r.cell("popd"), r.cell("Dovecot"),
                          "-" if ratio is None else
                          f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.3f}",
                          r.better, r.target_text(), r.met(), cores(r, "client"),
                          cores(r, "other")])
        widths = [max(len(x[i]) for x in lines) for i in range(len(head))]
        out = []
        for k, line in enumerate(lines):
            out.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |")
            if k == 0:
                out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        return "\n".join(out)

    def report(self, started, load0):
        print()
        print("=" * 78)
        print(self.table())
        print()
        print("Details:")
        for line in self.details:
            print(f"- {line}")
        errors = [(r.label, s, e) for r in self.rows for s, e in r.error.items()]
        if errors:
            print("\nFailures (a figure marked * comes from the sessions that succeeded):")
            for label, s, e in errors:
                print(f"- {label}, {s}: {e}")
        print("\nClient check (is the client the bottleneck?):")
        worst = max(((r.cores[n]["client"], r.label, n) for r in self.rows for n in r.cores),
                    default=None)
        if worst:
            print(f"- highest client load: {worst[0]:.2f} cores ({worst[1]}, {worst[2]} run); "
                  f"the client is one process and can use at most 1.00")
        for line in self.checks:
            print(f"- {line}")
        print(f"- server CPU measured with: {getattr(self, 'cpu_kind', '?')}")
        print("- 'client cores' (popd run/Dovecot run): the benchmark process's CPU "
              "(getrusage) divided by the wall time of the measured interval; 'other load': "
              "busy CPU (/proc/stat) that is neither the client nor the measured server's "
              "processes, in cores (anything above ~0.1 means the machine was not quiet).")
        noisy = [(r.cores[n]["other"], r.label, n) for r in self.rows for n in r.cores
                 if r.cores[n]["other"] > 0.25]
        if noisy:
            other, label, n = max(noisy)
            print(f"\nWARNING: the machine was not quiet: other processes used up to "
                  f"{other:.2f} cores ({label}, {n} run; {len(noisy)} measurement(s) above "
                  f"0.25); CPU-bound figures are low and noisy.  Rerun on a quiet machine.")
        print(f"\nRun: {started:%Y-%m-%d %H:%M:%S} UTC, {time.perf_counter() - self.t0:.0f} s; "
              f"load average before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, after "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def popd_revision():
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "popd"],
                               capture_output=True, text=True).stdout.splitlines()
        return rev + (f" + {len(dirty)} uncommitted change(s) in popd/" if dirty else "")
    except OSError:
        return "?"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dovecot", action="store_true",
                    help="also run Dovecot (apt-get install -y dovecot-pop3d if missing)")
    ap.add_argument("--quick", action="store_true",
                    help="smaller mailboxes, shorter runs (about 2 minutes)")
    ap.add_argument("--only", default=",".join(SCENARIOS),
                    help=f"comma-separated subset of {','.join(SCENARIOS)}")
    ap.add_argument("--login-seconds", type=float, help="length of each login-rate run")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                    help="before each measurement, wait up to SECONDS for the machine to be "
                         "idle (for shared machines)")
    ap.add_argument("--no-cgroup", action="store_true",
                    help="measure server CPU from the process tree instead of a cgroup v2")
    ap.add_argument("--key-type", choices=("rsa", "ecdsa"), default="rsa",
                    help="server certificate key (default RSA-2048, as in the anchor runs)")
    ap.add_argument("--tmpdir", default="/tmp",
                    help="where the work directory goes (needs ~4 GB for a full run)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    wanted = {s.strip() for s in args.only.split(",") if s.strip()}
    if wanted - set(SCENARIOS):
        ap.error(f"unknown scenario(s) {sorted(wanted - set(SCENARIOS))}; "
                 f"choose from {', '.join(SCENARIOS)}")
    if os.geteuid() != 0:
        ap.error("run as root: the servers switch to the mailbox owners' uids")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))

    started = datetime.datetime.now(datetime.timezone.utc)
    load0 = os.getloadavg()
    print(f"popd compare: {started:%Y-%m-%d %H:%M:%S} UTC on {platform.node()}, "
          f"{os.cpu_count()} CPUs, load {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; "
          f"Python {platform.python_version()}; popd {popd_revision()}"
          + (f"; Dovecot {dovecot_version()}" if args.dovecot and shutil.which("dovecot")
             else ""), flush=True)
    b = Bench(args)
    b.t0 = time.perf_counter()
    try:
        b.make_data(wanted)
        b.start_servers(wanted)
        for name in SCENARIOS:
            if name in wanted:
                b.log(f"scenario {name}")
                getattr(b, name)()
        b.report(started, load0)
    finally:
        for srv in b.servers:
            try:
                srv.stop()
            except Exception as e:              # noqa: BLE001 - keep cleaning up
                print(f"stopping {srv.name}: {e}", file=sys.stderr)
        if args.keep:
            print(f"work directory kept: {b.work}")
        else:
            shutil.rmtree(b.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
