"""Where a session's memory goes: PSS by role and by mapping class.

Runs in: the benchmark process, as root (bench/compare.py's pss scenario
prints it for popd; run alone it starts its own popd):

    /opt/popd/bin/python bench/session_memory.py [--sessions 50] [--mode plain|implicit]
                                                 [--repeat-open]

For every popd process it reads /proc/PID/smaps, classifies each mapping
(heap, anonymous: pymalloc arenas and big buffers, stack, the interpreter
binary, libpython if any, each extension module group, libssl/libcrypto,
libc and the rest of the shared libraries), and sums Pss, Private_Dirty
and Shared per class and per role (the process title: supervisor,
spawner, child idle, child session, front, lock-helper ...).  Run once
on the idle server and once with N logged-in sessions, the difference per
session by role and class is what a session costs and where.  It also
prints the minor page faults per session by role (/proc/PID/stat): each
copy-on-write copy and each new page a process touched is one.

Each maildrop is opened for the first time by its measured session
(scanned, its UIDLs computed, its index cache written), as in
bench/compare.py; with --repeat-open every user first logs in and quits
once, so the measured sessions open maildrops popd has seen before (the
index cache read instead), as most sessions of a running server do.
"""
import collections
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FIELDS = ("Pss", "Private_Dirty", "Private_Clean", "Shared_Clean", "Shared_Dirty")
_HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")


def classify(path):
    if not path:
        return "anonymous (pymalloc arenas, big buffers)"
    if path == "[heap]":
        return "heap (malloc)"
    if path.startswith("[stack"):
        return "stack"
    if path.startswith("["):
        return "kernel ([vdso], [vvar])"
    name = os.path.basename(path)
    if name.startswith(("libssl", "libcrypto")):
        return "OpenSSL (libssl, libcrypto)"
    if name.startswith("_ssl.") or name.startswith("_hashlib."):
        return "ext: _ssl, _hashlib"
    if name.startswith("libpython"):
        return "libpython"
    if re.fullmatch(r"python3(\.\d+)?", name):
        return "interpreter binary"
    if name.endswith(".so") or ".so." in name:
        if "lib-dynload" in path or "site-packages" in path:
            return "ext: other extension modules"
        if name.startswith(("libc.", "libc-", "ld-linux", "libm.")):
            return "libc, libm, ld.so"
        return "other shared libraries"
    return "other files"


def smaps(pid):
    """{class: {field: kB}} for one process."""
    out = collections.defaultdict(lambda: dict.fromkeys(FIELDS, 0))
    current = None
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                if _HEADER.match(line):
                    parts = line.split(None, 5)
                    current = out[classify(parts[5].strip() if len(parts) > 5 else "")]
                    continue
                key, _, rest = line.partition(":")
                if key in FIELDS and current is not None:
                    current[key] += int(rest.split()[0])
    except OSError:
        return {}
    return out


def role(pid):
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return None
    return title[len("popd: "):].split(" [")[0] if title.startswith("popd: ") else title


def minor_faults(pid):
    """Minor page faults since the process started (/proc/PID/stat field
    10): each copy-on-write copy, and each new page, is one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(stat.rsplit(b")", 1)[1].split()[7])


def snapshot(pids):
    """{(role, class): {field: kB}} summed over the processes, the number
    of processes per role, and {pid: (role, minor faults)}."""
    table = collections.defaultdict(lambda: dict.fromkeys(FIELDS, 0))
    count = collections.Counter()
    faults = {}
    for pid in pids:
        r = role(pid)
        if r is None:
            continue
        count[r] += 1
        for cls, fields in smaps(pid).items():
            for k, v in fields.items():
                table[r, cls][k] += v
        n = minor_faults(pid)
        if n is not None:
            faults[pid] = (r, n)
    return table, count, faults


def faults_per_session(before, after, sessions):
    """{role: minor faults per session}: each process's faults since the
    first snapshot (all of them for one started since), by its role in
    the second.  Processes that ended in between (a cleartext session's
    front) are not counted."""
    out = collections.Counter()
    for pid, (r, n) in after[2].items():
        out[r] += n - before[2].get(pid, (r, 0))[1]
    return {r: n / sessions for r, n in out.items()}


def difference(before, after, sessions):
    """Lines of text: what N sessions added, per session, by role and class."""
    (t0, c0, _), (t1, c1, _) = before, after
    roles = sorted({r for r, _ in t1} | {r for r, _ in t0})
    lines = [f"{'role / mapping':46} {'Pss':>8} {'PrivDirty':>9}   kB per session "
             f"({sessions} sessions)"]
    total = 0
    for r in roles:
        rows = []
        for cls in sorted({c for rr, c in t1 if rr == r} | {c for rr, c in t0 if rr == r}):
            a, b = t0.get((r, cls), dict.fromkeys(FIELDS, 0)), t1.get((r, cls), dict.fromkeys(FIELDS, 0))
            pss = (b["Pss"] - a["Pss"]) / sessions
            dirty = (b["Private_Dirty"] - a["Private_Dirty"]) / sessions
            if abs(pss) >= 0.5 or abs(dirty) >= 0.5:
                rows.append((cls, pss, dirty))
        role_pss = sum(p for _, p, _ in rows)
        total += role_pss
        lines.append(f"{r + f' ({c0[r]} -> {c1[r]} processes)':46} {role_pss:8.1f}")
        for cls, pss, dirty in sorted(rows, key=lambda x: -abs(x[1])):
            lines.append(f"  {cls:44} {pss:8.1f} {dirty:9.1f}")
    lines.append(f"{'total':46} {total:8.1f}")
    faults = faults_per_session(before, after, sessions)
    lines.append("minor page faults per session, by role (copy-on-write copies and new "
                 "pages; a cleartext front has exited and is not counted):")
    lines.append("  " + ", ".join(f"{r} {n:.0f}" for r, n in
                                  sorted(faults.items(), key=lambda x: -x[1]) if n >= 0.5))
    return lines


def main():
    import argparse
    import asyncio
    import platform
    import poplib
    import ssl
    import time

    from bench.compare_servers import wait_settled, Tree
    from tests.daemon import Daemon

    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--mode", choices=("plain", "implicit"), default="plain")
    ap.add_argument("--repeat-open", action="store_true",
                    help="open every maildrop once before the measured sessions")
    args = ap.parse_args()
    n = args.sessions
    users = {f"m{i}": (f"pw{i}", 61300 + i, 61300 + i) for i in range(n)}
    with Daemon(limits={"max_children": n + 8, "spare_children": 2, "max_per_ip": n + 8},
                users=users, tls=args.mode == "implicit",
                plaintext="always") as d:
        for login, (_, uid, _) in users.items():
            d.write_mbox(login, b"From a@b Thu Nov 26 10:00:00 2026\nSubject: x\n\nhello\n\n",
                         uid=uid)
        if args.repeat_open:
            for login, (pw, _, _) in users.items():
                client = poplib.POP3(d.host, d.port)
                client.user(login)
                client.pass_(pw)
                client.stat()
                client.quit()
        procs = Tree(d.proc.pid)
        time.sleep(1)
        before = snapshot(wait_settled(procs, quiet=1.0))
        ctx = ssl.create_default_context(cafile=str(d.ca_file)) if d.ca_file else None

        async def open_all():
            held = []
            for login, (pw, _, _) in users.items():
                if ctx:
                    r, w = await asyncio.open_connection(d.host, d.tls_port, ssl=ctx)
                else:
                    r, w = await asyncio.open_connection(d.host, d.port)
                await r.readline()
                w.write(f"USER {login}\r\nPASS {pw}\r\nSTAT\r\n".encode())
                for _ in range(3):
                    line = await r.readline()
                assert line.startswith(b"+OK 1 "), line
                held.append(w)
            return held

        loop = asyncio.new_event_loop()
        held = loop.run_until_complete(open_all())
        time.sleep(2)
        after = snapshot(wait_settled(procs, quiet=1.5))
        # Which interpreter: the figures differ by Python version (README).
        print(f"popd on Python {platform.python_version()} ({sys.executable}), "
              f"{n} {args.mode} sessions{', repeat opens' if args.repeat_open else ''}")
        print("\n".join(difference(before, after, n)))
        for w in held:
            w.close()
        loop.close()


if __name__ == "__main__":
    main()
