"""Foundation figures: logins/s with 16 concurrent clients, PSS per idle
slot and per logged-in session, supervisor (+ spawner) CPU per slot life cycle.

Run as root from the repository: /opt/popd/bin/python bench/foundation.py
It starts the real daemon (tests/daemon.py: numeric uids, temp dirs,
SHA512-CRYPT with 5000 rounds as in the Dovecot anchor) on loopback.

--backend system: the login rate with the host's accounts instead, made by
useradd and chpasswd in a copy of /etc bind-mounted over /etc in a private
mount namespace (tests/host_accounts.py), hashed with --crypt (default
YESCRYPT, Debian's default for passwd(1)); the memory figures are skipped.
"""
import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.daemon import USERS, Daemon, descendants  # noqa: E402
from tests.host_accounts import make_etc, namespace_wrap  # noqa: E402

MBOX = b"From a@b Thu Nov 26 10:00:00 2026\nSubject: x\n\nhello\n\n" * 10
CLK = os.sysconf("SC_CLK_TCK")


def pss_kb(pids):
    total = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/smaps_rollup"):
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


async def session(host, port, user, password, stat_expect, keep=False):
    r, w = await asyncio.open_connection(host, port)
    assert (await r.readline()).startswith(b"+OK")
    w.write(f"USER {user}\r\nPASS {password}\r\nSTAT\r\n".encode())
    assert (await r.readline()).startswith(b"+OK")
    line = await r.readline()
    assert line.startswith(b"+OK Logged in"), line
    assert (await r.readline()) == stat_expect
    if keep:
        return r, w
    w.write(b"QUIT\r\n")
    await r.readline()
    w.close()


# One account per concurrent client: a maildrop serves one session at a
# time ([IN-USE] for a second), as it would for real users.
BENCH_USERS = {f"bench{i}": (f"pw{i}", 61100 + i, 61100 + i) for i in range(64)}


async def login_rate(d, seconds, concurrency):
    expect = b"+OK 10 %d\r\n" % (10 * len(b"Subject: x\r\n\r\nhello\r\n"))
    count, latencies = 0, []
    stop = time.monotonic() + seconds

    async def worker(user):
        nonlocal count
        password = BENCH_USERS[user][0]
        while time.monotonic() < stop:
            t = time.monotonic()
            await session(d.host, d.port, user, password, expect)
            latencies.append(time.monotonic() - t)
            count += 1
    started = time.monotonic()
    await asyncio.gather(*(worker(f"bench{i}") for i in range(concurrency)))
    return count, time.monotonic() - started, sorted(latencies)


async def hold_sessions(d, n):
    expect = b"+OK 0 0\r\n"
    return [await session(d.host, d.port, f"bench{i}", BENCH_USERS[f"bench{i}"][0], expect,
                          keep=True) for i in range(n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--backend", choices=("passwd-file", "system"), default="passwd-file")
    ap.add_argument("--crypt", default="YESCRYPT", help="chpasswd -c METHOD for --backend system")
    args = ap.parse_args()
    limits = {"max_children": 256, "spare_children": 16, "max_per_ip": 256}
    if args.backend == "system":
        root = tempfile.mkdtemp(prefix="popd-bench-", dir="/tmp")
        try:
            etc = make_etc(root, {u: (pw, uid, args.crypt) for u, (pw, uid, _) in BENCH_USERS.items()})
            scheme = (etc / "shadow").read_text().split("bench0:", 1)[1].split("$")[1]
            print(f"backend system: {len(BENCH_USERS)} accounts by useradd + chpasswd -c "
                  f"{args.crypt} (${scheme}$ hashes in /etc/shadow)")
            login_figures(args, Daemon(limits=limits, users=USERS, wrap=namespace_wrap(etc),
                                       extra={"auth": {"backend": ["system"]}}))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return
    print("backend passwd-file: SHA512-CRYPT, 5000 rounds")
    login_figures(args, Daemon(limits=limits, users={**USERS, **BENCH_USERS}))
    memory_figures(args)


def login_figures(args, daemon):
    with daemon as d:
        for user, (_, uid, _) in BENCH_USERS.items():
            d.write_mbox(user, MBOX, uid=uid)
        d.wait_for_pids("child idle", 16, timeout=30)
        root = [d.proc.pid] + d.spawners()       # the supervisor and its spawner
        cpu0 = sum(cpu_seconds(p) for p in root)
        count, elapsed, lat = asyncio.run(login_rate(d, args.seconds, args.concurrency))
        cpu1 = sum(cpu_seconds(p) for p in root)
        print(f"logins/s ({args.concurrency} clients, USER/PASS/STAT/QUIT): "
              f"{count / elapsed:.1f}  ({count} in {elapsed:.1f} s; "
              f"p50 {lat[len(lat) // 2] * 1000:.1f} ms, p99 {lat[int(len(lat) * .99)] * 1000:.1f} ms)")
        print(f"supervisor + spawner CPU per slot life cycle (accept, admit, fork, hand over, reap): "
              f"{(cpu1 - cpu0) / count * 1000:.2f} ms")
        print(f"supervisor PSS after the run: {pss_kb([d.proc.pid]) / 1024:.2f} MB")


def memory_figures(args):
    # Memory: an idle server with spare_children=2, then with 2 + N idle
    # slots, then with N logged-in sessions (the spare count unchanged).
    n = args.sessions
    with Daemon(limits={"max_children": n + 8, "spare_children": 2, "max_per_ip": n + 8},
                users=BENCH_USERS) as d:
        d.wait_for_pids("child idle", 2)
        time.sleep(1)
        base = pss_kb(descendants(d.proc.pid) | {d.proc.pid})
        loop = asyncio.new_event_loop()
        held = loop.run_until_complete(hold_sessions(d, n))
        d.wait_for_pids("child session", n, timeout=30)
        d.wait_for_pids("child idle", 2, timeout=30)
        time.sleep(1)
        with_sessions = pss_kb(descendants(d.proc.pid) | {d.proc.pid})
        print(f"PSS: idle server {base / 1024:.1f} MB; with {n} logged-in sessions "
              f"{with_sessions / 1024:.1f} MB; per session {(with_sessions - base) / n / 1024:.2f} MB")
        for r, w in held:
            w.close()
        loop.close()
    with Daemon(limits={"max_children": n + 8, "spare_children": 2, "max_per_ip": 8}) as d:
        d.wait_for_pids("child idle", 2)
        time.sleep(1)
        base = pss_kb(descendants(d.proc.pid) | {d.proc.pid})
    with Daemon(limits={"max_children": n + 8, "spare_children": n + 2, "max_per_ip": 8}) as d:
        d.wait_for_pids("child idle", n + 2, timeout=60)
        d.wait_for_pids("front", n + 2, timeout=60)
        time.sleep(1)
        idle = pss_kb(descendants(d.proc.pid) | {d.proc.pid})
        print(f"PSS per idle slot (child + front): {(idle - base) / n / 1024:.2f} MB")


if __name__ == "__main__":
    main()
